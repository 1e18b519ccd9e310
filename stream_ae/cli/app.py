"""The ``stream-ae`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them together. Modules are imported lazily:
``stream-ae --help`` does not load TensorFlow.

The worker's own commands are listed in ``COMMANDS``. Commands that belong to packages above
``stream_ae`` (the trainer's ``evaluate``, the development tools' ``dev-stack``, ``demo`` and
``bench``) are plugged in through the ``stream_ae.commands`` entry-point group declared in
``pyproject.toml``: ``stream_ae`` never imports them, so the dependencies point one way and the
worker image, which does not ship the development tools, simply lacks those commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from stream_ae.cli.boundary import debugging, run_command
from stream_ae.logs import quiet_native_stderr, setup_logging

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("stream_ae.cli.worker", "run the streaming worker (long-lived)"),
    "produce": ("stream_ae.cli.produce", "replay a CSV or synthetic streams to Kafka"),
    "alerts": ("stream_ae.cli.alerts", "follow the alerts topic and print a table"),
    "model": ("stream_ae.cli.model", "inspect artifacts and the models workers run"),
    "explain": ("stream_ae.cli.explain", "explain an alert: values, expected values, scores"),
    "dlq": ("stream_ae.cli.dlq", "list dead letters, or re-send chosen ones to their topic"),
    "tail": ("stream_ae.cli.tail", "peek at any topic, as a table or JSON lines"),
}

PLUGIN_GROUP = "stream_ae.commands"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

EXAMPLES = (
    "stream-ae dev-stack up --detach",
    "stream-ae worker",
    "stream-ae produce --synthetic 20 --anomalous 5 --rate 200",
)


def plugin_commands() -> dict[str, tuple[str, str]]:
    """Commands of installed packages above ``stream_ae``: name -> (module, one-line help).

    An entry point names the command's module; the module's ``HELP`` is its one-line help.
    """
    found: dict[str, tuple[str, str]] = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in COMMANDS:
            continue
        found[ep.name] = (ep.module, _help_of(ep.module))
    return found


def _help_of(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return "(not installed here: needs a checkout with the development tools)"
    return str(getattr(module, "HELP", "")) or (module.__doc__ or "").strip().splitlines()[0]


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, but keeps an epilog of examples line for line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def examples_epilog(examples: Sequence[str]) -> str:
    """The ``--help`` epilog listing a command's examples (each a real, parseable command)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


def plain(text: str | None) -> str | None:
    """Help text without reStructuredText markup (docstrings double as descriptions)."""
    return None if text is None else text.replace("``", "'").replace(":mod:", "")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-ae",
        description="Streaming anomaly detection on Kafka with LSTM autoencoders. "
        "Settings come from STREAM_AE_* environment variables or .env (see README).",
        epilog=examples_epilog(EXAMPLES),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log level on stderr (default: STREAM_AE_LOG_LEVEL, else WARNING; the worker's "
        "INFO); DEBUG also prints the traceback of an error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in {**COMMANDS, **plugin_commands()}.items():
        command_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        if only == name:
            module = importlib.import_module(module_name)
            module.add_arguments(command_parser)
            command_parser.description = plain(command_parser.description)
            if getattr(module, "EXAMPLES", None):
                command_parser.epilog = examples_epilog(module.EXAMPLES)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter is noise for a command-line user. A real process (no
    # argv given) also filters the native libraries' lines that ignore this variable, unless
    # debugging; a call from Python (tests, notebooks) leaves the caller's stderr alone.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(args_list)
    if argv is None and not debug:
        quiet_native_stderr()
    # Only the chosen command's module is imported (heavy ones pull in Keras).
    names = set(COMMANDS) | {ep.name for ep in entry_points(group=PLUGIN_GROUP)}
    chosen = next((a for a in args_list if a in names), None)
    parser = build_parser(only=chosen)
    args = parser.parse_args(args_list)
    if args.log_level and argv is None:
        # The worker reads its level from the settings: the option is the variable, for this
        # process only (never set from a call in Python, whose environment is the caller's).
        os.environ["STREAM_AE_LOG_LEVEL"] = args.log_level
    if argv is None and args.command != "worker":  # the worker: from its settings
        level = args.log_level or os.environ.get("STREAM_AE_LOG_LEVEL", "").upper()
        setup_logging(level if level in LOG_LEVELS else "WARNING", "text")
    # A command with subcommands stores the chosen one as <command>_command ("model status").
    subcommand = getattr(args, f"{args.command}_command", None)
    prog = " ".join(filter(None, ("stream-ae", args.command, subcommand)))
    return run_command(prog, args._run, args, debug=debug)


if __name__ == "__main__":
    raise SystemExit(main())
