"""The exception tree of stream-ae.

Every error the worker can meet is one of these types, so callers can tell what went wrong
(and whether trying again can help) without parsing messages.
"""

from __future__ import annotations


class StreamAEError(Exception):
    """Base class of every stream-ae error."""

    retriable: bool = False


class ConfigError(StreamAEError):
    """The settings are invalid; raised once, at start-up.

    ``fix``, when given, is how to put it right; it ends the message (``problem; fix``), and
    the command line's error boundary then adds no generic advice of its own.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{message}; {fix}" if fix else message)
        self.fix = fix


class SchemaError(StreamAEError):
    """An input message cannot be decoded or validated; it goes to the dead-letter topic.

    ``reason`` is a short machine-readable code (``not_json``, ``bad_value``...), ``detail`` the
    human-readable explanation naming the offending value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ArtifactError(StreamAEError):
    """A model artifact is missing, corrupt, or does not match what the caller expects."""


class IncompatibleModelError(ArtifactError):
    """A valid artifact that cannot replace the running model, or cannot use the stored window
    states: its window length or features differ (it would need new window states)."""


class StoreError(StreamAEError):
    """The window store cannot be reached or answered something unexpected."""

    retriable = True


class StateFormatError(StoreError):
    """A stored window state cannot be decoded (wrong magic, version or shape).

    Not retriable: reading the same bytes again gives the same answer. The stores report an
    undecodable value per stream instead of raising this (the processor quarantines it, so it
    affects only its own stream); see :class:`StateShapeError` for what they do raise.
    """

    retriable = False


class StateShapeError(StateFormatError):
    """Stored states have another window shape than the model: the model does not fit the
    stored states (every stream, not one), so the worker must not run with it."""


class BrokerError(StreamAEError):
    """The Kafka broker cannot be reached or refused a request.

    Retriable unless the client said otherwise (a configuration or authorisation error, a
    record the broker will never take): ``BrokerError("...", retriable=False)``.
    """

    retriable = True

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class MessageTooLargeError(BrokerError):
    """A message is over the producer's (or the broker's) size limit: sending it again fails
    the same way."""

    retriable = False
