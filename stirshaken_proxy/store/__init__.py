"""Persistence: the number inventory (SQLite by default)."""
