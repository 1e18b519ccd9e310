"""The ``stream-ae`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them together, so adding a command is one line in
``COMMANDS``. Modules are imported lazily: ``stream-ae --help`` does not load TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("stream_ae.commands.worker_cmd", "run the streaming worker (long-lived)"),
    "produce": ("stream_ae.commands.produce_cmd", "replay a CSV or synthetic streams to Kafka"),
    "alerts": ("stream_ae.commands.alerts_cmd", "follow the alerts topic and print a table"),
    "dev-stack": ("stream_ae.commands.devstack_cmd", "start a local broker and Redis for dev"),
    "demo": ("stream_ae.commands.demo_cmd", "end-to-end demo: stack, model, stream, alerts"),
    "model": ("stream_ae.commands.model_cmd", "inspect artifacts and the models workers run"),
    "evaluate": ("stream_ae.commands.evaluate_cmd", "NAB evaluation and scoring"),
    "bench": ("stream_ae.commands.bench_cmd", "benchmarks: throughput, latency, memory"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-ae",
        description="Streaming anomaly detection on Kafka with LSTM autoencoders. "
        "Settings come from STREAM_AE_* environment variables or .env (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter is noise for a command-line user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen command's module is imported (heavy ones pull in Keras).
    chosen = next((a for a in args_list if a in COMMANDS), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(args_list)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
