"""One frozen settings object, built once at start-up and passed down.

Every field can be set by an environment variable ``STREAM_AE_<FIELD>`` (upper case) or in a
``.env`` file; list fields take JSON (``STREAM_AE_INPUT_TOPICS='["a","b"]'``) or a comma-separated
string. Unknown keys are rejected, secrets are ``SecretStr`` and never appear in logs or reprs.

>>> s = Settings(input_topics=["metrics"], window_size=32)
>>> s.window_size, s.redis_url
(32, 'redis://127.0.0.1:6379/0')
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from stream_ae.core.alerting import BUILT_IN, AlertPolicy
from stream_ae.core.windowing import GapRule
from stream_ae.errors import ConfigError
from stream_ae.logs import mask_urls

ENV_PREFIX = "STREAM_AE_"
# One broker address: a host name, an IPv4 address or a bracketed IPv6 one, then :port.
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
# Settings of the alert policy -> AlertPolicy's field names.
_POLICY_FIELDS = {
    "threshold": "threshold",
    "resolve_ratio": "resolve_ratio",
    "open_after_windows": "open_after",
    "resolve_after_windows": "resolve_after",
    "cooldown_windows": "cooldown",
}


class _PrefixedDotEnv(DotEnvSettingsSource):
    """The ``.env`` file, its ``STREAM_AE_*`` lines only: a ``.env`` shared with other tools
    may hold anything else. Unknown ``STREAM_AE_*`` keys are still refused (extra="forbid")."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = ENV_PREFIX.lower()
        return {k: v for k, v in super()._load_env_vars().items() if k.lower().startswith(prefix)}


class Settings(BaseSettings):
    """Configuration of the worker and the command-line tools."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _PrefixedDotEnv(settings_cls), file_secret_settings

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    # --- Kafka ------------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stream-ae.metrics"],
        description="Topics the worker consumes events from (key = stream id).",
    )
    group_id: str = Field("stream-ae", description="Consumer group id of the worker group.")
    client_id: str = Field("stream-ae", description="Kafka client id prefix.")
    alerts_topic: str = Field("stream-ae.alerts", description="Topic alerts are produced to.")
    dlq_topic: str = Field(
        "stream-ae.dlq", description="Dead-letter topic for messages that cannot be decoded."
    )
    auto_offset_reset: Literal["earliest", "latest", "error"] = Field(
        "earliest",
        description="What to do when the group has no committed offset or it is out of range: "
        "'earliest'/'latest' reset explicitly (and log it), 'error' stops the worker.",
    )
    session_timeout_ms: int = Field(10_000, ge=1_000, description="Consumer session timeout.")
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="Kafka's limit between polls before a rebalance."
    )
    fetch_max_wait_ms: int = Field(100, ge=0, description="Broker-side wait for a fetch.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when security_protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: Path | None = Field(None, description="Client private key (mutual TLS).")
    ssl_password: SecretStr | None = Field(None, description="Password of the private key.")
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        "kafka-python",
        description="Kafka client library: kafka-python, or confluent (librdkafka, several times "
        "faster; needs the 'fast' extra).",
    )

    # --- Redis ------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL of the window store (without credentials: use the fields below).",
    )
    redis_username: str | None = Field(None, description="Redis ACL user name.")
    redis_password: SecretStr | None = Field(None, description="Redis ACL password (secret).")
    redis_key_prefix: str = Field("sae", description="Prefix of every Redis key we write.")
    redis_cluster: bool = Field(
        False,
        description="Connect to a Redis Cluster (redis.cluster.RedisCluster) through the node in "
        "redis_url; also implied by a redis+cluster:// (or rediss+cluster://) URL.",
    )
    redis_ssl_ca_file: Path | None = Field(
        None, description="CA bundle to verify the Redis server (TLS: rediss:// URL)."
    )
    redis_ssl_cert_file: Path | None = Field(
        None, description="Client certificate for Redis (mutual TLS)."
    )
    redis_ssl_key_file: Path | None = Field(
        None, description="Client private key for Redis (mutual TLS)."
    )
    state_loss: Literal["warn", "rewind"] = Field(
        "warn",
        description="When the stored states are older than the committed offsets (Redis "
        "restarted empty, from an old snapshot, or evicted keys): 'warn' logs and counts it; "
        "'rewind' also replays the partition from where its states stop (the log's start "
        "when unknown), rebuilding the windows as far as the topic still holds the events.",
    )
    redis_config_check: Literal["warn", "refuse", "off"] = Field(
        "warn",
        description="At start-up, check that Redis neither evicts our keys (maxmemory-policy) "
        "nor runs without persistence (AOF/RDB): 'warn' logs, 'refuse' stops the worker.",
    )

    # --- Windows and batches ----------------------------------------------------------------
    window_size: int | None = Field(
        None, ge=2, le=4096, description="Window length W; defaults to the model's, must match."
    )
    stride: int = Field(1, ge=1, description="Score a window every `stride` events per stream.")
    max_poll_records: int = Field(2_000, ge=1, description="Most events in one poll batch.")
    max_batch_wait_ms: int = Field(200, ge=1, description="Longest wait to fill a poll batch.")
    max_batch_processing_s: float = Field(
        30.0,
        gt=0,
        description="Budget for processing one batch; a batch that would exceed it is cut "
        "(its tail is re-polled) so processing stays far below max_poll_interval_ms.",
    )
    # A live stream that pauses: see stream_ae.core.windowing.GapRule and docs/operations.md.
    # 'score' by default: exactly what the worker did before the rule existed (same windows,
    # scores and alert ids), and a model trained on gapless data is the only judge of what
    # a gap does to it.
    gap_policy: Literal["score", "mark", "restart"] = Field(
        "score",
        description="A window whose events span a gap (more than gap_periods of the stream's "
        "periods between two events; the period: the median spacing of the window's events): "
        "'score' scores it like any other (nothing is checked), 'mark' scores it and flags it "
        "(window.gap in its alerts), 'restart' does not score it (the stream's windows start "
        "again after the gap).",
    )
    gap_periods: float = Field(
        10.0,
        gt=1,
        allow_inf_nan=False,
        description="How many of a stream's periods without events make a gap (gap_policy).",
    )
    overlap: bool = Field(
        False,
        description="Poll and decode the next batch while the current one is in the model "
        "(on a second thread); alerts, state write and commit stay in order per batch. Off by "
        "default: not measured to help on 2 cores (docs/performance.md, section 8).",
    )
    max_message_bytes: int = Field(
        65_536, ge=64, description="Messages larger than this go to the dead-letter topic."
    )
    batch_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048],  # <= 2x padding
        description="Batch sizes the model is called with (windows padded up to the next one) "
        "so the compiled graph is reused instead of retraced; larger batches are cut into chunks "
        "of the largest. Keep the largest near max_poll_records: padding is wasted work.",
    )
    model_jit: bool = Field(
        True,
        description="Compile the model's inference with XLA on the TensorFlow backend: 2-4x "
        "faster small batches, 20-35% faster large ones on a CPU, for about 1.5 s of compiling "
        "per batch bucket when the worker starts and when it swaps in a new architecture.",
    )

    # --- Model and alert policy -------------------------------------------------------------
    model_path: Path | str = Field(
        Path("artifacts/model"),
        description="A model artifact directory, or a registry root holding <model_name>/: a "
        "folder, or a URL of object storage (s3://bucket/prefix, gs://...; "
        "docs/operations.md).",
    )
    model_name: str = Field("default", description="Model name in the registry.")
    model_poll_interval_s: float = Field(
        30.0, gt=0, description="How often the registry pointer is re-read (fallback to pub/sub)."
    )
    # How long a worker waits at start-up for a usable model (a registry with no champion
    # yet, an unreadable or unfitting champion) before it exits 1. 15 minutes covers a first
    # model trained and published by hand or by the trainer's first run (minutes on this
    # project's data), yet turns a worker pointed at the wrong registry or model name into a
    # visible exit (a restart count, CrashLoopBackOff) within the quarter hour instead of a
    # pod that idles forever looking alive. A registry folder that does not exist at all is
    # refused at once (no wait).
    model_wait_s: float = Field(
        900.0,
        ge=0,
        description="Longest wait at start-up for a first usable model (a registry with no "
        "champion yet) before the worker exits 1; 0 waits forever. A registry folder that does "
        "not exist stops the worker at once (exit 2).",
    )
    # The alert policy: bounds live in AlertPolicy only (checked by _alert_policy_field below).
    # None (unset): the running detector's policy (its detector.json), else the built-in
    # default; a value set here wins over both, field by field.
    threshold: float | None = Field(
        None,
        description="Alert threshold on the final anomaly score; defaults to the detector's.",
    )
    resolve_ratio: float | None = Field(
        None,
        description="Hysteresis: an open alert resolves when the score falls below "
        "threshold * resolve_ratio; defaults to the detector's, else "
        f"{BUILT_IN['resolve_ratio']}.",
    )
    open_after_windows: int | None = Field(
        None,
        description="Consecutive windows above threshold before an alert opens; defaults to "
        f"the detector's, else {BUILT_IN['open_after']}.",
    )
    resolve_after_windows: int | None = Field(
        None,
        description="Consecutive windows below the resolve level before it resolves; defaults "
        f"to the detector's, else {BUILT_IN['resolve_after']}.",
    )
    cooldown_windows: int | None = Field(
        None,
        description="Windows after a resolve during which no new alert opens; defaults to the "
        f"detector's, else {BUILT_IN['cooldown']}.",
    )

    # --- Operations -------------------------------------------------------------------------
    metrics_host: str = Field("0.0.0.0", description="Bind address of /metrics and /healthz.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables the endpoint.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines as JSON (for collectors) or text (for people); 'auto': text on "
        "a terminal, JSON otherwise.",
    )
    retry_backoff_max_s: float = Field(
        30.0, gt=0, description="Longest backoff between retries when Kafka or Redis is down."
    )
    worker_id: str | None = Field(
        None, description="Name of this worker in heartbeats; defaults to host-pid."
    )

    @field_validator("model_path", mode="before")
    @classmethod
    def _model_location(cls, value: Any) -> Any:
        # A URL of object storage stays text (a Path would fold its "//"), a folder is a Path;
        # the same rule as stream_ae.model.registry_store.registry_root.
        text = str(value)
        scheme, sep, _ = text.partition("://")
        if sep and scheme != "file" and scheme.isidentifier():
            return text.rstrip("/")
        return Path(text.removeprefix("file://"))

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        # kafka-python would take 'localhost9092' as a host and add :9092; librdkafka too. The
        # typo then shows up as an unreachable broker 30 s later instead of here.
        addresses = [part.strip() for part in value.split(",")]
        for address in addresses:
            match = _HOST_PORT.match(address)
            if match is None or not 1 <= int(match.group(2)) <= 65535:
                which = f" ({address!r} is not)" if len(addresses) > 1 else ""
                raise ValueError(
                    f"not a host:port list{which}; write e.g. localhost:9092 or "
                    "kafka-1:9092,kafka-2:9092"
                )
        return ",".join(addresses)

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("batch_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator(*_POLICY_FIELDS)
    @classmethod
    def _alert_policy_field(cls, value: Any, info: ValidationInfo) -> Any:
        # One field at a time, so the error names the setting; AlertPolicy holds the bounds.
        AlertPolicy(**{_POLICY_FIELDS[info.field_name or ""]: value})
        return value

    @field_validator("input_topics")
    @classmethod
    def _non_empty_topics(cls, value: list[str]) -> list[str]:
        if not value or any(not t.strip() for t in value):
            raise ValueError("at least one non-empty topic is required")
        return value

    @field_validator("batch_buckets")
    @classmethod
    def _sorted_buckets(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("batch_buckets must be positive integers")
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
            )
        if self.max_batch_processing_s * 1000 > self.max_poll_interval_ms / 2:
            raise ValueError(
                "max_batch_processing_s must be under half of max_poll_interval_ms "
                "so a slow batch never triggers a rebalance"
            )
        if self.alerts_topic in self.input_topics or self.dlq_topic in self.input_topics:
            raise ValueError("alerts_topic and dlq_topic must differ from the input topics")
        return self

    def gap_rule(self) -> GapRule:
        """The rule for windows across a gap that these settings describe."""
        return GapRule(self.gap_policy, self.gap_periods)

    def alert_policy(self) -> AlertPolicy:
        """The alert policy these settings set: the fields left unset (None) are the running
        detector's, else the built-in ones (:meth:`AlertPolicy.over`, in the processor)."""
        return AlertPolicy(
            **{policy: getattr(self, setting) for setting, policy in _POLICY_FIELDS.items()}
        )

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{os.uname().nodename}-{os.getpid()}"

    def describe(self) -> dict[str, Any]:
        """The settings as a dict for logs: secrets masked, and credentials inside URLs (a
        password in ``redis_url``) too."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else None
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, str):
                out[name] = mask_urls(value)
            else:
                out[name] = value
        return out


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def field_names() -> set[str]:
    """Names of every setting, as used after the ``STREAM_AE_`` prefix (lower case)."""
    return set(Settings.model_fields)


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from the environment, ``.env`` and ``overrides``.

    Raises :class:`ConfigError` with one line listing every invalid or unknown key, each named
    as its environment variable, with the closest known name for a typo.
    """
    env = os.environ if environ is None else environ
    known = field_names()
    unknown = sorted(
        key
        for key in env
        if key.upper().startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in known
    )
    if unknown:
        raise ConfigError(
            "unknown setting(s) in the environment: "
            + "; ".join(_unknown_with_suggestion(key) for key in unknown)
        )
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


def _unknown_with_suggestion(key: str) -> str:
    """``key`` (an unknown ``STREAM_AE_*`` name) with the closest known setting, if any.

    >>> _unknown_with_suggestion("STREAM_AE_BOOTSTRAP_SERVER")
    'STREAM_AE_BOOTSTRAP_SERVER (did you mean STREAM_AE_BOOTSTRAP_SERVERS?)'
    >>> _unknown_with_suggestion("STREAM_AE_COLOUR")
    'STREAM_AE_COLOUR'
    """
    name = key.upper().removeprefix(ENV_PREFIX).lower()
    close = difflib.get_close_matches(name, sorted(field_names()), n=1, cutoff=0.75)
    return f"{key} (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else key


def _problem(error: Any) -> str:
    """One validation error as ``name: what is wrong (got 'value')``; secrets' values are
    never shown, nor values of unknown keys (from ``.env``) that may be anyone's secret."""
    location = ".".join(str(part) for part in error["loc"])
    if not location:
        return str(error["msg"]).removeprefix("Value error, ")
    name = location.split(".")[0].lower().removeprefix(ENV_PREFIX.lower())
    if error["type"] == "extra_forbidden":
        if not location.lower().startswith(ENV_PREFIX.lower()):  # an override, not a variable
            return f"{location}: unknown setting"
        return f"{_unknown_with_suggestion(ENV_PREFIX + name.upper())}: unknown setting"
    field = Settings.model_fields.get(name)
    shown = ""
    if field is not None and "Secret" not in str(field.annotation) and "input" in error:
        shown = f" (got {error['input']!r})"
    message = str(error["msg"]).removeprefix("Value error, ")
    # A list's item index helps (batch_buckets.1); a union's member name (window_size.int) not.
    where = "".join(f".{part}" for part in error["loc"][1:] if isinstance(part, int))
    return f"{name}{where}: {message}{shown}"
