r"""One-line, key=value logs (logfmt) for all three processes.

Every line about a task carries `task=` and `attempt=`, so one grep follows a
task through the web process, the processor and the worker:

    ts=2026-11-27T20:01:02.345Z level=info process=processor msg="workflow started" task=… attempt=1

Values may hold text from providers or clients (errors, prompts, ids). Every
control character in a value is escaped (`\x1b`, `\r`, `\u202e`), so a line
is one line and nothing in it drives the terminal that shows it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

_KEYS_FROM_TEMPORAL = {"temporal_workflow": ("workflow_id", "workflow_type"),
                       "temporal_activity": ("workflow_id", "activity_type", "attempt")}


# C0 and C1 controls, DEL, and the invisible characters that reorder or hide text (bidi overrides and
# isolates, zero-width, line/paragraph separators, BOM).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    r"""`text` with every control character written as an escape (ESC as `\x1b`): safe to print on a terminal."""
    return CONTROL.sub(lambda m: _escaped(m.group()), text)


_QUOTED = re.compile(r'[\\"]|' + CONTROL.pattern)


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=') or CONTROL.search(text):
        return '"' + _QUOTED.sub(lambda m: "\\" + m.group() if m.group() in '\\"' else _escaped(m.group()), text) + '"'
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
