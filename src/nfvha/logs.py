"""Log set-up for the daemons: human lines by default, one JSON object a line on request.

Decisions are logged once each, with their reason, through `decision`: a human reads the
message; a log pipeline (Loki, Elasticsearch, journald) gets the same facts as fields —
``decision`` (what kind), ``reason``, and the VNF, host and strategy concerned.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter", "decision", "setup_logging"]

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, json_logs: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)


def decision(logger: logging.Logger, kind: str, message: str, *, reason: str,
             level: int = logging.INFO, **fields: Any) -> None:
    """Log one decision: ``decision: <message>`` for people, structured fields for tools.

    ``kind`` names the decision (``recover``, ``host-down``, ``place``, ...); ``fields``
    carry the VNF, host, strategy and the like, under stable names.
    """
    logger.log(level, "decision: %s", message,
               extra={"decision": kind, "reason": reason, **fields})
