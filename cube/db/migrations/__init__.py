"""Alembic migrations of CUBE's database (see docs/database.md)."""
