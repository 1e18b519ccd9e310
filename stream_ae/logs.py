"""Structured logging: one JSON object per line (or plain text for humans).

Fields passed as ``extra={"fields": {...}}`` are merged into the JSON object. Settings are only
ever logged through :meth:`Settings.describe`, which masks secrets; and both formatters mask
the password of any URL in a line (:func:`mask_urls`), whoever wrote it: a Redis URL with a
password in it, in a client library's error text, is logged without the password.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# scheme://user:password@host: the password, up to the last '@' before the path (greedy, so an
# unencoded '@' in the password does not leave its tail in clear).
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s/]*@")
# ?password=... / &token=... in a URL's query.
_URL_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|token|secret)=)[^&\s#]*", re.I)
MASK = "***"


def mask_urls(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    >>> mask_urls("redis://app:s3cret@redis:6379/0 and rediss://:tok@h?password=x&db=1")
    'redis://app:***@redis:6379/0 and rediss://:***@h?password=***&db=1'
    >>> mask_urls("redis://127.0.0.1:6379/0"), mask_urls("redis://u:p@ss@h/0")
    ('redis://127.0.0.1:6379/0', 'redis://u:***@h/0')
    """
    if "://" not in text:
        return text
    return _URL_QUERY_SECRET.sub(rf"\g<1>{MASK}", _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text))


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_urls(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: _masked(v) for k, v in fields.items()})
        if record.exc_info:
            entry["exc"] = mask_urls(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda v: mask_urls(str(v))).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return mask_urls(base)


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once (idempotent); quiets chatty client libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "urllib3", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("msg", extra=fields(a=1))`` attaches structured fields."""
    return {"fields": values}
