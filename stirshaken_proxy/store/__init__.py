"""Store backends behind one interface (``base.Store``): SQLite (the embedded default) and
PostgreSQL (several instances sharing one inventory)."""

from __future__ import annotations

from pathlib import Path

from .base import Store


def open_store(*, path: Path, url: str = "", instance: str = "") -> Store:
    """The store a configuration names: ``[store] url`` (postgresql://...) or the SQLite
    file at ``[store] path``. Raises base.StoreError with a message for the operator."""
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PgStore

        return PgStore(url, instance=instance)
    from .sqlite import NumberStore

    return NumberStore(url.removeprefix("sqlite://") if url else path)
