"""Polling until a condition holds, with a liveness bound (never a performance assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``.

    The timeout is a liveness bound (something is stuck), not a performance assertion.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval_s)
