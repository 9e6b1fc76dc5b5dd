"""pman tests."""
