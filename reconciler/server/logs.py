"""Log lines as text or JSON (`--log-format json`), one line each, with secrets redacted.

JSON lines carry `time`, `level`, `logger`, `message`, and `org` / `run` when known. Every
message goes through `redact.redact_text` (secret-looking `key=value` pairs, bearer tokens,
URL passwords) and `printable` (one line, no terminal escapes) before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from reconciler.redact import printable, redact_text

MESSAGE_LIMIT = 2000


class _Redacting(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            # a type, never the exception's text or traceback: they may hold anything
            message += f" ({type(record.exc_info[1]).__name__})"
        message = printable(redact_text(message), MESSAGE_LIMIT)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        if not self.json_lines:
            return f"{stamp} {record.levelname} {record.name}: {message}"
        line: dict[str, object] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for extra in ("org", "run"):
            value = getattr(record, extra, None)
            if value is not None:
                line[extra] = printable(value, 200)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """The root logger writes to stderr in `log_format` (text or json); noisy libraries are
    kept at WARNING (uvicorn's access log is off: webhooks are counted in /metrics)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is a run that outlasted the
    # interval: by design (a run never overlaps itself), not worth a line per tick
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
