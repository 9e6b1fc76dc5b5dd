"""CUBE: the central backend of the fabric (users, plugins, feeds, instances, files, scheduler)."""

__version__ = "0.1.0"
