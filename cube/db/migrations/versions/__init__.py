"""Migration revisions, one file each, in one linear chain (0001, 0002, ...)."""
