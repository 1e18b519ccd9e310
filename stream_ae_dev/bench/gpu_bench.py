"""Scorer throughput on a CUDA GPU, with Keras on the PyTorch backend (no TensorFlow needed).

Measures windows/s at batch sizes 1k..64k for the W=64 F=1 H=64 and W=64 F=8 H=64
autoencoders, three ways side by side in one process:

- ``keras``: the plain ``model.predict_on_batch`` (the reference: ~1.4M windows/s on an H100);
- ``predict``: :meth:`Scorer.predict` - the model call as the worker makes it (bucket padding,
  the outputs back to numpy);
- ``score``: :meth:`Scorer.score` - what the worker calls per poll batch: scaling, the model
  call and the calibrated scoring (numpy, on the CPU).

Target: ``score`` >= 1,000,000 windows/s at the best batch size.

Run on the GPU machine from the repository root (it needs no network; bring the Keras wheel
and its dependencies along if Keras is not installed, e.g. in ``.whl/``)::

    pip install --no-index --find-links .whl keras      # only if keras is missing
    KERAS_BACKEND=torch python -m stream_ae_dev.bench.gpu_bench --out gpu-bench.json

or ``python stream_ae_dev/bench/gpu_bench.py`` (same options). Nothing here imports TensorFlow;
the script checks that nothing else did either.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_CONFIGS = ("1:64", "8:64")  # features:hidden
TARGET_WINDOWS_PER_S = 1_000_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--batches",
        type=_int_list,
        default=list(DEFAULT_BATCHES),
        help="comma-separated batch sizes (default 1024..65536, powers of two)",
    )
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="comma-separated FEATURES:HIDDEN model sizes (default 1:64,8:64)",
    )
    parser.add_argument("--window", type=int, default=64, help="window length W (64)")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time each measurement at least this long"
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 matmuls (faster on Ampere/Hopper, slightly different numerics)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text!r}")
    return values


def _configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        features, _, hidden = part.strip().partition(":")
        out.append((int(features), int(hidden or 64)))
    return out


def _import_backend() -> tuple[Any, Any]:
    """torch and keras, with the torch backend, or a clear message of what is missing."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if os.environ["KERAS_BACKEND"] != "torch":
        sys.exit(f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}; this script needs 'torch'")
    try:
        import torch
    except ImportError:
        sys.exit("PyTorch is not installed: this script runs Keras on the PyTorch backend")
    try:
        import keras
    except ImportError:
        sys.exit(
            "Keras is not installed: bring the wheel and its dependencies along and run "
            "`pip install --no-index --find-links <dir> keras`"
        )
    if keras.backend.backend() != "torch":
        sys.exit(f"Keras runs on {keras.backend.backend()!r}, not torch")
    if "tensorflow" in sys.modules:
        sys.exit("TensorFlow was imported: this benchmark must run without it")
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")
    return torch, keras


def rate(call: Callable[[], object], windows: int, seconds: float) -> float:
    """Windows/s of ``call()`` (``windows`` per call), after two untimed calls."""
    call()
    call()
    calls = 0
    started = time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()  # every result comes back as numpy: the GPU is synchronised on each call
        calls += 1
    return calls * windows / (time.perf_counter() - started)


def bench_config(
    features: int, hidden: int, window: int, batches: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    """One model size at every batch size: keras, Scorer.predict and Scorer.score."""
    import numpy as np

    from stream_ae.core.scoring import fit_calibration
    from stream_ae.model.artifacts import Artifact, CalibrationSet, Scaling
    from stream_ae.model.inference import Scorer
    from stream_ae.model.network import ModelSpec, build_model

    names = ("value",) if features == 1 else tuple(f"f{i}" for i in range(features))
    spec = ModelSpec(window=window, features=features, feature_names=names, hidden=hidden)
    model = build_model(spec, seed=0)
    rng = np.random.default_rng(0)
    artifact = Artifact(
        name="gpu-bench",
        version=f"h{hidden}-f{features}",
        path=Path("<memory>"),
        spec=spec,
        scaling=Scaling("global", (0.0,) * features, (1.0,) * features),
        calibration=CalibrationSet(fit_calibration(rng.normal(size=(256, features)))),
        metrics={},
        model=model,
        manifest={},
    )
    rows = []
    for batch in batches:
        windows = rng.standard_normal((batch, window, features)).astype(np.float32)
        streams = [f"s{i % 1000}" for i in range(batch)]
        scorer = Scorer(artifact, buckets=(batch,))  # one bucket of exactly this size
        row = {
            "features": features,
            "hidden": hidden,
            "window": window,
            "batch": batch,
            "keras": rate(functools.partial(model.predict_on_batch, windows), batch, seconds),
            "predict": rate(functools.partial(scorer.predict, windows), batch, seconds),
            "score": rate(functools.partial(scorer.score, windows, streams), batch, seconds),
        }
        rows.append(row)
        print(
            f"W={window} F={features} H={hidden} batch {batch:>6}: "
            f"keras {row['keras']:>12,.0f}  Scorer.predict {row['predict']:>12,.0f}  "
            f"Scorer.score {row['score']:>12,.0f} windows/s",
            flush=True,
        )
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model size: the best batch of Scorer.score and whether it meets the target."""
    out = []
    for key in sorted({(r["window"], r["features"], r["hidden"]) for r in rows}):
        mine = [r for r in rows if (r["window"], r["features"], r["hidden"]) == key]
        best = max(mine, key=lambda r: r["score"])
        out.append(
            {
                "config": f"W={key[0]} F={key[1]} H={key[2]}",
                "best_batch": best["batch"],
                "score_windows_per_s": best["score"],
                "predict_windows_per_s": max(r["predict"] for r in mine),
                "keras_windows_per_s": max(r["keras"] for r in mine),
                "target": TARGET_WINDOWS_PER_S,
                "met": best["score"] >= TARGET_WINDOWS_PER_S,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch, keras = _import_backend()
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name(0)
    print(
        f"{device}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}; keras {keras.__version__} on "
        f"{keras.backend.backend()}; python {platform.python_version()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for features, hidden in _configs(args.configs):
        rows += bench_config(features, hidden, args.window, args.batches, args.seconds)
    if "tensorflow" in sys.modules:
        print("warning: TensorFlow got imported during the run", file=sys.stderr)
    summary = summarise(rows)
    print()
    for s in summary:
        verdict = "met" if s["met"] else "MISSED"
        print(
            f"{s['config']}: Scorer.score {s['score_windows_per_s']:,.0f} windows/s at batch "
            f"{s['best_batch']} (target {s['target']:,}: {verdict}); Scorer.predict "
            f"{s['predict_windows_per_s']:,.0f}, plain keras {s['keras_windows_per_s']:,.0f}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "device": device,
                    "torch": torch.__version__,
                    "cuda": torch.version.cuda,
                    "keras": keras.__version__,
                    "tf32": args.tf32,
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        # Run as a file: make the repository root importable for stream_ae.
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
