"""What the ``stream-ae-train`` commands share: the command type, the settings, the registry and
artifact options, and the model, fitting and gate options generated from their dataclasses.

Nothing here imports TensorFlow at import time: ``--help`` must stay fast and work anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_ae.model.network import ModelSpec
from training.cli import options
from training.detector import DEFAULT_DETECTOR, DEFAULT_HORIZON, model_spec
from training.fit import FitConfig
from training.gate import GateConfig
from training.refit import RefitPlan


@dataclass(frozen=True)
class Command:
    """One subcommand: how it adds its options, how it runs, its one-line help and 1-3 real
    examples (shown at the end of its ``--help``)."""

    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    examples: tuple[str, ...] = ()
    # What the usage line shows besides [options]: the positionals and required choices.
    required: str = ""


# --- settings, registry and artifacts --------------------------------------------------------


def settings() -> Any:
    """The ``STREAM_AE_*`` settings, read only when a command needs them."""
    from stream_ae.settings import load_settings

    return load_settings()


def alert_policy() -> Any:
    """The operator's alert policy from the settings (the open/resolve rules set there; each
    detector's own policy fills the rest), for shadow replays."""
    return settings().alert_policy()


def registry_root(args: argparse.Namespace) -> Path | str:
    """The registry root of ``--registry``, else of the settings: a folder or a URL."""
    from stream_ae.model.registry_store import registry_root as parse_root

    return parse_root(args.registry or settings().model_path)


def model_name(args: argparse.Namespace) -> str:
    return str(args.name or settings().model_name)


def registry(args: argparse.Namespace) -> Any:
    """The registry the options name, notifying workers over Redis when a URL is known."""
    from training.registry import Registry, redis_notifier

    # The Redis of the settings only when it was configured (environment or .env): a trainer
    # with no Redis around must not wait for the default address.
    config = settings()  # the ACL credentials are secrets of the settings, as for the worker
    configured = config.redis_url if "redis_url" in config.model_fields_set else None
    url = getattr(args, "redis_url", None) or configured
    if not url:
        return Registry(registry_root(args), None)
    password = config.redis_password.get_secret_value() if config.redis_password else None
    notifier = redis_notifier(url, username=config.redis_username, password=password)
    return Registry(registry_root(args), notifier)


def artifact_dir(args: argparse.Namespace) -> Path:
    """The artifact directory of ``--artifact``, or of ``--version`` (default: the champion)."""
    from stream_ae.errors import ArtifactError
    from stream_ae.model.registry import (
        local_version_dir,
        read_champion,
        resolve_artifact_dir,
        resolve_version,
    )

    if args.artifact:
        return resolve_artifact_dir(args.artifact, model_name(args))
    root, name = registry_root(args), model_name(args)
    if args.version:
        return local_version_dir(root, name, resolve_version(root, name, args.version))
    version = read_champion(root, name)
    if version is None:
        raise ArtifactError(f"no --artifact given and {root}/{name} has no champion")
    return local_version_dir(root, name, version)


def load_artifact(args: argparse.Namespace) -> Any:
    from stream_ae.model.artifacts import load_artifact as load

    return load(artifact_dir(args))


def split(text: str | None) -> list[str] | None:
    """``"a, b"`` as ``["a", "b"]``; None for None or an empty text."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def add_registry_location(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--registry",
        metavar="DIR|URL",
        help="registry root: a folder, or object storage such as s3://bucket/prefix "
        "(default: $STREAM_AE_MODEL_PATH, else artifacts/model)",
    )
    group.add_argument(
        "--name", help="model name in the registry (default: $STREAM_AE_MODEL_NAME, else default)"
    )


def add_registry_options(parser: argparse.ArgumentParser, *, notify: bool = True) -> None:
    group = parser.add_argument_group("registry")
    add_registry_location(group)
    if notify:
        group.add_argument(
            "--redis-url",
            help="notify workers of a new champion on the Redis pub/sub channel "
            "stream-ae.models (default: $STREAM_AE_REDIS_URL if set, else no notification)",
        )


def add_artifact_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model to use (an artifact, or a registry version)")
    group.add_argument(
        "--artifact",
        type=Path,
        metavar="DIR",
        help="an artifact directory (or a registry root: its --name champion)",
    )
    add_registry_location(group)
    group.add_argument("--version", help="registry version (default: the champion)")


# --- the model spec ----------------------------------------------------------------------------

# ModelSpec lives in stream_ae (the worker rebuilds models from it): its help texts live here,
# its defaults there.
MODEL_HELP = {
    "kind": "reconstruct the window, predict its last --horizon steps, or both (composite)",
    "window": "window length in events",
    "hidden": "LSTM units per layer",
    "layers": "stacked LSTM layers",
    "latent": "size of the latent code",
    "dropout": "dropout after each LSTM layer, in [0, 1)",
    "reverse": "reconstruct the window reversed (easier to learn for long windows)",
    "horizon": "steps predicted by predict/composite models",
    "masking": "mask padded steps: series shorter than the window become padded windows",
}
# The features come from the data, not from options.
_SPEC_FROM_DATA = ("features", "feature_names")


# A predict/composite model given no --horizon forecasts this many steps (a reconstruct model
# has none: ModelSpec's own default of 0).
def add_model_options(
    parser: argparse.ArgumentParser, *, inherit: bool = False, base: ModelSpec | None = None
) -> None:
    """The ModelSpec options, their defaults ``base``'s (default: ModelSpec's); with
    ``inherit`` an option not given keeps the champion's value."""
    group = parser.add_argument_group("model" + (" (default: the champion's)" if inherit else ""))
    horizon = (
        f"{base.horizon} ({base.kind}), " if base is not None and base.kind != "reconstruct" else ""
    )
    options.add_options(
        group,
        ModelSpec,
        exclude=_SPEC_FROM_DATA,
        helps=MODEL_HELP,
        shown_defaults={
            "horizon": f"{horizon}{DEFAULT_HORIZON} (predict, composite), 0 (reconstruct)",
            "latent": "--hidden",
        },
        defaults_note="the champion's" if inherit else None,
        base=base,
    )


def spec_given(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line, by field name."""
    return options.given(ModelSpec, args, exclude=_SPEC_FROM_DATA)


def build_spec(
    args: argparse.Namespace, names: Sequence[str], base: ModelSpec | None = None
) -> ModelSpec:
    """The spec the options describe for features ``names``, on ``base`` (default: the
    ModelSpec defaults)."""
    return model_spec(base or ModelSpec(), spec_given(args), names)


# --- fitting and the gate ----------------------------------------------------------------------


def add_fit_options(
    parser: argparse.ArgumentParser, *, inherit: bool = False, base: FitConfig | None = None
) -> None:
    """The FitConfig options (their defaults ``base``'s, default FitConfig's), and --quiet."""
    group = parser.add_argument_group(
        "fitting and calibration" + (" (default: the champion's)" if inherit else "")
    )
    options.add_options(
        group, FitConfig, defaults_note="the champion's" if inherit else None, base=base
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def build_fit_config(args: argparse.Namespace, base: FitConfig | None = None) -> FitConfig:
    """The fit configuration the options describe, on ``base`` (default: FitConfig's)."""
    from training.fit import default_verbosity

    verbose = 0 if args.quiet else default_verbosity()
    return options.build(FitConfig, args, base, verbose=verbose)


def add_post_options(parser: argparse.ArgumentParser) -> None:
    """The detector's post-processing: the default detector's unless ``--no-post-processing``
    or ``--post-processing FILE`` (another detector's, from its ``detector.json``)."""
    group = parser.add_argument_group("detector").add_mutually_exclusive_group()
    group.add_argument(
        "--no-post-processing",
        action="store_true",
        help="write no detector.json: the worker alerts on the calibrated window score alone "
        "(default: the default detector's post-processing: likelihood, time-of-day profile, "
        "running-range check, peak hold; see docs/nab.md)",
    )
    group.add_argument(
        "--post-processing",
        metavar="DETECTOR_JSON",
        type=Path,
        help="the post-processing and alert policy of another detector: an artifact's "
        "detector.json, or docs/skab/detector.json, the detector `stream-ae evaluate skab` "
        "measures (smoothed distance and running-range check, resolving after 10 windows, for "
        "multivariate sensors; see docs/skab.md)",
    )


def build_post(args: argparse.Namespace) -> Any:
    """The post-processing the options ask for: the default detector's, another detector's
    (``--post-processing FILE``), or None."""
    return build_detector(args)[0]


def build_detector(args: argparse.Namespace) -> tuple[Any, Any]:
    """What comes after the model, as the options ask for it: the post-processing (None:
    ``--no-post-processing``) and the detector's alert policy, the default detector's or
    another detector's (``--post-processing FILE``, whose ``"policy"`` comes along)."""
    if args.no_post_processing:
        return None, DEFAULT_DETECTOR.policy
    path: Path | None = getattr(args, "post_processing", None)
    if path is None:
        return DEFAULT_DETECTOR.post, DEFAULT_DETECTOR.policy
    return read_detector_file(path)


def read_post_file(path: Path) -> Any:
    """The post-processing in ``path`` (:func:`read_detector_file`)."""
    return read_detector_file(path)[0]


def read_detector_file(path: Path) -> tuple[Any, Any]:
    """The post-processing and alert policy in ``path``: a ``detector.json``
    (``{"post": {...}, "policy": {...}}``, each optional) or the bare post-processing object
    (no policy of its own); one-line errors for a file that is missing, not JSON or invalid."""
    from stream_ae.core.alerting import AlertPolicy
    from stream_ae.core.postprocess import PostParams
    from stream_ae.errors import ConfigError
    from stream_ae.model.artifacts import parse_policy

    fix = "give an artifact's detector.json (--post-processing ARTIFACT_DIR/detector.json)"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"--post-processing: cannot read {path}: {exc.strerror}", fix=fix
        ) from None
    except ValueError as exc:
        raise ConfigError(f"--post-processing: {path} is not JSON ({exc})", fix=fix) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--post-processing: {path} holds no post-processing object", fix=fix)
    detector = "post" in data or "policy" in data
    unknown = sorted(set(data) - {"post", "policy"}) if detector else []
    if unknown:
        raise ConfigError(
            f"--post-processing: {path}: unknown key(s) {', '.join(unknown)} (known: post, policy)",
            fix=fix,
        )
    post = data.get("post") if detector else data
    if post is not None and not isinstance(post, dict):
        raise ConfigError(f"--post-processing: {path} holds no post-processing object", fix=fix)
    known = {f.name for f in dataclasses.fields(PostParams)}
    unknown = sorted(set(post or {}) - known)
    if unknown:
        raise ConfigError(
            f"--post-processing: {path}: unknown field(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})",
            fix=fix,
        )
    try:
        policy = parse_policy(data.get("policy", {})) if detector else AlertPolicy()
        return (PostParams.from_dict(post) if post is not None else None), policy
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--post-processing: {path}: {exc}", fix=fix) from None


def add_gate_options(
    parser: argparse.ArgumentParser, *, plan: Sequence[str] = ("gate_fraction",)
) -> None:
    """The GateConfig options, the refit plan's fields named in ``plan`` (gate fraction,
    exclusion, warm start), and --force."""
    group = parser.add_argument_group("champion/challenger gate")
    options.add_options(group, GateConfig)
    plan_fields = {f.name for f in options.cli_fields(RefitPlan)}
    options.add_options(group, RefitPlan, exclude=plan_fields - set(plan))
    group.add_argument(
        "--force", action="store_true", help="promote without the gate (recorded as forced)"
    )


def build_gate_config(args: argparse.Namespace) -> GateConfig:
    return options.build(GateConfig, args)


def build_plan(args: argparse.Namespace, **fixed: Any) -> RefitPlan:
    """The refit plan the gate options describe, with ``fixed`` fields (name, spec, fit...)."""
    return options.build(RefitPlan, args, gate=build_gate_config(args), **fixed)
