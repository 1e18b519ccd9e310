"""Reading back a score timeline PNG (:mod:`stream_ae.score_timeline`): every PNG drawn with
it carries the line :func:`~stream_ae.score_timeline.describe` wrote, so a test can tell that a
command drew its plot through the shared function, and what it put in, without pixels."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from stream_ae.score_timeline import SOFTWARE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def timeline_description(path: Path, *, min_bytes: int = 20_000) -> str:
    """The ``Description`` of a score timeline PNG at ``path``; fails the test unless it is a
    PNG of at least ``min_bytes`` (not a blank canvas) written by the shared drawing."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path}: only {len(data)} bytes"
    with Image.open(path) as image:
        text = dict(image.text)  # type: ignore[attr-defined]
    assert text.get("Software") == SOFTWARE, f"{path} was not drawn as a score timeline: {text}"
    return text["Description"]
