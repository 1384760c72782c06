"""One-line, key=value logs (logfmt) for all three processes.

Every line about a task carries `task=` and `attempt=`, so one grep follows a
task through the web process, the processor and the worker:

    ts=2026-11-27T20:01:02.345Z level=info process=processor msg="workflow started" task=… attempt=1
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_KEYS_FROM_TEMPORAL = {"temporal_workflow": ("workflow_id", "workflow_type"),
                       "temporal_activity": ("workflow_id", "activity_type", "attempt")}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {"ts": f"{created}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                                  "process": self.process, "logger": record.name, "msg": record.getMessage()}
        for extra, keys in _KEYS_FROM_TEMPORAL.items():  # context the Temporal SDK attaches
            info = getattr(record, extra, None)
            if isinstance(info, dict):
                fields.update({f"temporal_{k}" if k == "attempt" else k: info.get(k) for k in keys})
        fields.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)


def setup(process: str, level: str | None = None) -> None:
    """Send every logger's records to stderr as logfmt lines (once per process)."""
    root = logging.getLogger()
    if any(getattr(h, "_logfmt", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(process))
    handler._logfmt = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))


def event(logger: logging.Logger | logging.LoggerAdapter, message: str, level: int = logging.INFO, **fields: Any):
    """Log `message` with key=value fields (None values are left out)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": {k: v for k, v in fields.items() if v is not None}})
