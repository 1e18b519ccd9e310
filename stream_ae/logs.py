"""Logging: one JSON object per line for collectors, or plain text for people.

Fields passed as ``extra={"fields": {...}}`` are merged into the JSON object (``key=value`` in
text). Settings are only ever logged through :meth:`Settings.describe`, which masks secrets; and
both formatters mask the password of any URL in a line (:func:`mask_urls`), whoever wrote it: a
Redis URL with a password in it, in a client library's error text, is logged without it.

The native libraries under Keras write start-up chatter straight to file descriptor 2 (oneDNN
notices, "Could not find cuda drivers", an ERROR "failed call to cuInit" on every machine
without a GPU), before any Python logging is configured and whatever ``TF_CPP_MIN_LOG_LEVEL``
says. :func:`quiet_native_stderr` filters those known lines at the descriptor; everything else,
their real warnings and errors included, passes through unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
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


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger once (idempotent); quiets chatty client libraries.

    ``fmt``: ``json``, ``text``, or ``auto`` (text when stderr is a terminal, else JSON).
    """
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if root.level > logging.DEBUG:
        handler.addFilter(ConnectionChatter())
    for noisy in ("kafka", "urllib3", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class ConnectionChatter(logging.Filter):
    """Lets through at most one of the Kafka clients' own lines about a failed connection per
    ``interval_s``, none in the first one.

    While a broker is down, kafka-python logs four lines per connection attempt and librdkafka
    one per attempt and broker; our callers already log one line per retry (the worker) or end
    with one error line (the tools). A broker lost in the middle of a run still shows, rate
    limited. Everything else the clients log passes, and all of it at DEBUG.
    """

    LOGGERS = ("kafka", "stream_ae.io.kafka")
    PATTERN = re.compile(
        r"ECONNREFUSED|Connection refused|Connection failed|Connection lost|Bootstrap"
        r"|Unable to bootstrap|not ready; waiting|_TRANSPORT|_RESOLVE|_ALL_BROKERS_DOWN"
        r"|Failed to resolve|Name or service not known|Connect to .* failed"
    )

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last_s = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LOGGERS) or not self.PATTERN.search(record.getMessage()):
            return True
        now = time.monotonic()
        if now - self._last_s < self.interval_s:
            return False
        self._last_s = now
        return True


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("msg", extra=fields(a=1))`` attaches structured fields."""
    return {"fields": values}


# Start-up chatter of TensorFlow/XLA/oneDNN/CUDA probes that says nothing actionable.
NATIVE_NOISE = re.compile(
    rb"All log messages before absl::InitializeLog"
    rb"|oneDNN custom operations are on"
    rb"|oneDNN supports DT_INT32 only on platforms with AVX-512"
    rb"|cudart_stub\.cc.*Could not find cuda drivers"
    rb"|failed call to cuInit"
    rb"|Unable to register cu(DNN|FFT|BLAS) factory"
    rb"|computation placer already registered"
    rb"|TF-TRT Warning: Could not find TensorRT"
    rb"|This TensorFlow binary is optimized to use available CPU instructions"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
)


def quiet_native_stderr(noise: re.Pattern[bytes] = NATIVE_NOISE) -> None:
    """Drop the lines matching ``noise`` from everything written to file descriptor 2.

    Call it once, first thing in a command-line process (not in a library: it rewires the
    process's stderr). A pipe replaces descriptor 2; a thread copies each line to the original
    stderr unless it is noise. At exit the pipe is closed and drained, so last words are kept.
    """
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                kept = b"".join(line + b"\n" for line in lines if not noise.search(line))
                if kept:
                    os.write(original, kept)
            if pending and not noise.search(pending):
                os.write(original, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=2.0)

    atexit.register(drain)
