"""Logging as text or JSON lines (for journald and log shippers). Secrets never reach a log record:
URLs are masked before they are logged (config.mask_url)."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # apscheduler logs two INFO lines for every run of every job (the alert tick runs every 10 s): kept
    # for DEBUG, left out otherwise; its warnings (misfires, errors) always show.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
