"""Logging to stderr, as text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    _EXTRA = ("worker", "call_id", "account", "attest", "reason", "verdict", "orig", "dest",
              "peer")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in self._EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def tag_worker(index: int) -> None:
    """With several workers, every line says which one wrote it (JSON: "worker"; text:
    "[worker N]" after the level)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
        if not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s [worker %(worker)s] %(name)s: %(message)s"))
