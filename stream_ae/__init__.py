"""stream-ae: streaming anomaly detection on Kafka with LSTM autoencoders.

``from stream_ae import Detector`` is the embeddable API (:mod:`stream_ae.api`); it is imported
on first use, so importing the package (every command does) does not load Keras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Detector", "__version__"]

if TYPE_CHECKING:
    from stream_ae.api import Detector


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from stream_ae.api import Detector

        return Detector
    raise AttributeError(f"module 'stream_ae' has no attribute {name!r}")
