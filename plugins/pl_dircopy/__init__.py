"""pl-dircopy: an fs plugin that copies a directory into a new feed's output."""
