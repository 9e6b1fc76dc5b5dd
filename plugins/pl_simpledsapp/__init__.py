"""pl-simpledsapp: a ds plugin that copies its input files, renamed with a prefix."""
