"""Settings (stream_ae.settings): defaults, the STREAM_AE_ environment, list parsing, one clear
ConfigError for anything wrong, and secrets that never show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from stream_ae.core.alerting import AlertPolicy
from stream_ae.errors import ConfigError
from stream_ae.settings import ENV_PREFIX, Settings, field_names, load_settings

SECRETS = {
    "sasl_password": "sasl-hunter2",
    "ssl_password": "ssl-correct-horse",
    "redis_password": "redis-battery-staple",
}
SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "svc"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No STREAM_AE_ variables from the caller's shell, and no .env but the test's own."""
    import os

    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides)
    return str(info.value)


def test_defaults_load() -> None:
    settings = load_settings()
    assert settings == Settings.model_validate({})
    assert settings.input_topics == ["stream-ae.metrics"]
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.batch_buckets == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert settings.sasl_password is None and settings.security_protocol == "PLAINTEXT"
    assert settings.window_size is None and settings.stride == 1


def test_every_field_is_documented() -> None:
    undocumented = [
        name
        for name, field in Settings.model_fields.items()
        if name != "log_level" and not (field.description or "").strip()
    ]
    assert undocumented == []
    assert field_names() == set(Settings.model_fields)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.stride = 5


def test_environment_variables_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_WINDOW_SIZE", "32")
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("stream_ae_stride", "4")  # case does not matter
    monkeypatch.setenv("WINDOW_SIZE", "99")  # no prefix: not ours, ignored
    settings = load_settings()
    assert settings.window_size == 32
    assert settings.stride == 4
    assert settings.bootstrap_servers == "k1:9092,k2:9092"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_STRIDE", "4")
    assert load_settings({"stride": 2}).stride == 2


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STREAM_AE_GROUP_ID=from-dotenv\nSTREAM_AE_STRIDE=3\n")
    settings = load_settings()
    assert (settings.group_id, settings.stride) == ("from-dotenv", 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a", ["a"]),
        ("a,b,c", ["a", "b", "c"]),
        (" a , b ,, c ,", ["a", "b", "c"]),
        ('["x", "y"]', ["x", "y"]),
    ],
)
def test_comma_separated_or_json_lists(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("STREAM_AE_INPUT_TOPICS", raw)
    assert load_settings().input_topics == expected


def test_batch_buckets_are_parsed_sorted_and_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_BATCH_BUCKETS", "1024, 16,128,16")
    assert load_settings().batch_buckets == [16, 128, 1024]
    assert load_settings({"batch_buckets": [64, 8]}).batch_buckets == [8, 64]


def test_unknown_environment_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_WINDOWSIZE", "32")  # typo of WINDOW_SIZE
    monkeypatch.setenv("STREAM_AE_THRESHOLDD", "0.9")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "STREAM_AE_WINDOWSIZE" in message and "STREAM_AE_THRESHOLDD" in message


def test_unknown_key_in_dotenv_or_overrides_is_rejected(tmp_path: Path) -> None:
    assert "bogus" in config_error(bogus=1)
    (tmp_path / ".env").write_text("STREAM_AE_WINDOW_SIZ=3\n")
    with pytest.raises(ConfigError, match=r"(?i)window_siz"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("STREAM_AE_WINDOW_SIZE", "abc"),
        ("STREAM_AE_WINDOW_SIZE", "1"),
        ("STREAM_AE_STRIDE", "0"),
        ("STREAM_AE_THRESHOLD", "1.5"),
        ("STREAM_AE_METRICS_PORT", "70000"),
        ("STREAM_AE_AUTO_OFFSET_RESET", "smallest"),
        ("STREAM_AE_LOG_LEVEL", "LOUD"),
        ("STREAM_AE_BATCH_BUCKETS", "16,x"),
        ("STREAM_AE_BATCH_BUCKETS", "0,16"),
        ("STREAM_AE_INPUT_TOPICS", " , "),
        ("STREAM_AE_MAX_MESSAGE_BYTES", "10"),
    ],
)
def test_an_invalid_value_gives_one_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    field = env[len(ENV_PREFIX) :].lower()
    assert re.search(rf"\b{field}[.:]", str(info.value)), str(info.value)
    assert info.value.__cause__ is None  # one clear error, not a pydantic traceback chain


def test_several_invalid_values_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_STRIDE", "0")
    monkeypatch.setenv("STREAM_AE_METRICS_PORT", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "stride:" in str(info.value) and "metrics_port:" in str(info.value)


def test_inconsistent_settings_are_rejected() -> None:
    assert "sasl" in config_error(security_protocol="SASL_PLAINTEXT")
    assert "max_batch_processing_s" in config_error(
        max_batch_processing_s=200.0, max_poll_interval_ms=300_000
    )
    assert "differ from the input topics" in config_error(input_topics=["a", "b"], alerts_topic="b")
    assert "differ from the input topics" in config_error(input_topics=["a"], dlq_topic="a")
    assert load_settings({**SASL, "sasl_password": "x"}).sasl_mechanism == "PLAIN"


def test_secrets_never_appear_in_repr_str_or_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_AE_REDIS_PASSWORD", SECRETS["redis_password"])
    settings = load_settings(
        {**SASL, **{k: v for k, v in SECRETS.items() if k != "redis_password"}}
    )
    # They are there for the code that needs them...
    assert settings.sasl_password is not None
    assert settings.sasl_password.get_secret_value() == SECRETS["sasl_password"]
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == SECRETS["redis_password"]
    # ... and nowhere else.
    described = settings.describe()
    shown = [repr(settings), str(settings), repr(described), str(described), f"{settings}"]
    for text in shown:
        for secret in SECRETS.values():
            assert secret not in text
    assert described["sasl_password"] == "**********"
    assert described["redis_password"] == "**********"
    assert described["ssl_password"] == "**********"
    assert described["group_id"] == "stream-ae"  # describe() is otherwise complete


def test_secrets_do_not_leak_into_config_errors() -> None:
    message = config_error(**SECRETS, stride=0)  # invalid: SASL fields missing, bad stride
    for secret in SECRETS.values():
        assert secret not in message
    assert "stride" in message


def test_the_alert_policy_settings_build_the_one_alert_policy() -> None:
    settings = load_settings(
        {
            "threshold": 0.8,
            "resolve_ratio": 0.5,
            "open_after_windows": 2,
            "resolve_after_windows": 4,
            "cooldown_windows": 7,
        }
    )
    assert settings.alert_policy() == AlertPolicy(
        threshold=0.8, resolve_ratio=0.5, open_after=2, resolve_after=4, cooldown=7
    )
    assert load_settings().alert_policy() == AlertPolicy()  # nothing set: the detector's


def test_an_alert_setting_set_wins_over_the_detectors_policy_field_by_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per field: what the operator set (env or .env) > the detector's policy (detector.json) >
    the built-in default. A setting equal to the built-in default still wins: set is set."""
    detector = AlertPolicy(open_after=2, resolve_after=10)
    # (resolve_ratio, open_after, resolve_after, cooldown) as the processor runs them.
    assert load_settings().alert_policy().over(detector).rules() == (0.9, 2, 10, 0)
    assert load_settings().alert_policy().over(AlertPolicy()).rules() == (0.9, 1, 3, 0)
    monkeypatch.setenv("STREAM_AE_RESOLVE_AFTER_WINDOWS", "3")
    monkeypatch.setenv("STREAM_AE_COOLDOWN_WINDOWS", "5")
    operator = load_settings().alert_policy()
    assert operator == AlertPolicy(resolve_after=3, cooldown=5)
    assert operator.over(detector).rules() == (0.9, 2, 3, 5)
    assert operator.over(detector).threshold is None  # still the detector's score threshold


@pytest.mark.parametrize(
    ("setting", "policy_field", "value"),
    [
        ("threshold", "threshold", 1.0),
        ("threshold", "threshold", 0.0),
        ("threshold", "threshold", 1.01),
        ("resolve_ratio", "resolve_ratio", 1.0),
        ("resolve_ratio", "resolve_ratio", 0.0),
        ("open_after_windows", "open_after", 0),
        ("resolve_after_windows", "resolve_after", 0),
        ("cooldown_windows", "cooldown", 0),
        ("cooldown_windows", "cooldown", -1),
    ],
)
def test_settings_and_policy_share_one_set_of_bounds(
    setting: str, policy_field: str, value: float
) -> None:
    try:
        AlertPolicy(**{policy_field: value})
    except ValueError:
        assert setting in config_error(**{setting: value})
    else:
        assert getattr(load_settings({setting: value}), setting) == value


def test_a_password_inside_a_url_is_masked_in_describe_and_every_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    from stream_ae.logs import JsonFormatter, TextFormatter, fields

    secret = "url-hunter2"
    monkeypatch.setenv("STREAM_AE_REDIS_URL", f"redis://app:{secret}@redis.internal:6379/0")
    settings = load_settings()
    assert settings.redis_url.count(secret) == 1  # the client still gets it
    assert settings.describe()["redis_url"] == "redis://app:***@redis.internal:6379/0"
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, f"cannot reach {settings.redis_url}", None, None
    )
    record.__dict__.update(
        fields(settings=settings.describe(), url=settings.redis_url, urls=[settings.redis_url])
    )
    try:
        raise ConnectionError(f"Error connecting to {settings.redis_url}")
    except ConnectionError:
        import sys

        record.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert secret not in line and "redis://app:***@redis.internal" in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p@ss:w@h/1", "rediss://user:***@h/1"),
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("host:9092,other:9092", "host:9092,other:9092"),
    ],
)
def test_mask_urls(url: str, shown: str) -> None:
    from stream_ae.logs import mask_urls

    assert mask_urls(url) == shown


def test_a_dotenv_with_unrelated_lines_is_read_and_they_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# a .env shared with other tools\n"
        "DATABASE_URL=postgres://x\n"
        "export OTHER_TOOL=1\n"
        "STREAM_AE_GROUP_ID=from-dotenv\n"
        "window_size=3\n"  # no prefix: not ours either
    )
    settings = load_settings()
    assert settings.group_id == "from-dotenv" and settings.window_size is None
    (tmp_path / ".env").write_text("UNRELATED=1\nSTREAM_AE_WINDOWSIZE=3\n")
    with pytest.raises(ConfigError, match=r"(?i)windowsize"):  # our prefix, unknown key: refused
        load_settings()


def test_the_readme_lists_every_setting_with_its_default() -> None:
    """The README's configuration table is the settings' own list: a new field, a changed
    default or a removed one shows up here."""
    import re
    from pathlib import Path

    from stream_ae.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = dict(re.findall(r"^\| `(STREAM_AE_\w+)` \| `([^`]*)` \|", readme, re.M))
    expected = {}
    for name, field in Settings.model_fields.items():
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = None
        expected[f"{ENV_PREFIX}{name.upper()}"] = (
            repr(list(default)) if isinstance(default, list | tuple) else repr(default)
        )
    assert table == expected
