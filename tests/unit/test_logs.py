"""Log lines for people on a terminal, JSON for machines, and no native start-up noise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import orjson

LOG_ONE_LINE = (
    "from stream_ae.logs import setup_logging, fields; import logging; "
    "setup_logging('INFO', 'auto'); "
    "logging.getLogger('stream_ae.worker').info('batch done', extra=fields(events=3))"
)


def test_json_when_stderr_is_not_a_terminal() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOG_ONE_LINE], capture_output=True, check=True, timeout=60
    )
    entry = orjson.loads(done.stderr.decode().strip().splitlines()[-1])
    assert entry["msg"] == "batch done" and entry["events"] == 3
    assert entry["level"] == "info" and entry["logger"] == "stream_ae.worker"


def test_text_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    try:
        subprocess.run(
            [sys.executable, "-c", LOG_ONE_LINE], stderr=follower, check=True, timeout=60
        )
        text = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
    line = text.strip().splitlines()[-1]
    assert "INFO" in line and "stream_ae.worker: batch done events=3" in line
    assert not line.startswith("{")


NOISY_PROCESS = r"""
import os, sys
from stream_ae.logs import quiet_native_stderr
quiet_native_stderr()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are ...\n")
os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\n")
os.write(2, b"E0000 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. ...\n")
os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...\n")
os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
os.write(2, b"E0000 some_op.cc:1] a real native error\n")
print("a Python warning", file=sys.stderr)
print("last words", file=sys.stderr, end="")
"""


def test_native_noise_is_dropped_and_everything_else_kept() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NOISY_PROCESS], capture_output=True, check=True, timeout=60
    )
    lines = done.stderr.decode().splitlines()
    assert lines == ["E0000 some_op.cc:1] a real native error", "a Python warning", "last words"]
