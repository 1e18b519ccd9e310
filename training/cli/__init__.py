"""The ``stream-ae-train`` command line (also ``python -m training``).

One module per command group: :mod:`~training.cli.train`, :mod:`~training.cli.calibrate`
(``thresholds``, ``calibrate``), :mod:`~training.cli.inspection` (``report``, ``embed``,
``export-encoder``), :mod:`~training.cli.registry` (``publish``, ``promote``, ``rollback``,
``list``), :mod:`~training.cli.refit` and :mod:`~training.cli.shadow`. Their model, fitting
and gate options are generated from the dataclasses (:mod:`~training.cli.options`), so each
default is written once.

Defaults for Kafka, Redis and the registry come from the ``STREAM_AE_*`` settings, read only
when a command needs them, so ``--help`` works without any environment and without loading
TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from training.cli import calibrate, inspection, refit, registry, shadow, train
from training.cli.common import Command

COMMANDS: dict[str, Command] = {
    **train.COMMANDS,
    **calibrate.COMMANDS,
    **inspection.COMMANDS,
    **registry.COMMANDS,
    **refit.COMMANDS,
    **shadow.COMMANDS,
}


def _epilog(examples: Sequence[str]) -> str | None:
    if not examples:
        return None
    return "examples:\n" + "\n".join(f"  {line}" for line in examples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-ae-train",
        description="Train, calibrate, inspect and publish stream-ae models. Defaults for "
        "Kafka, Redis and the registry come from STREAM_AE_* settings.",
        epilog=_epilog(
            (
                "stream-ae-train train --csv cpu.csv --time-column time --out artifacts/cpu",
                "stream-ae-train publish artifacts/cpu --name cpu",
                "stream-ae-train refit --once --name cpu --since 7d",
            )
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        parser_of_command = sub.add_parser(
            name,
            # The full list of options is in the groups below; the usage line names only
            # what must be given.
            usage=f"stream-ae-train {name} {command.required + ' ' if command.required else ''}"
            "[options]",
            help=command.help,
            description=command.help,
            epilog=_epilog(command.examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add(parser_of_command)
        parser_of_command.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stream-ae-train``; returns the exit status. An error is one line on
    stderr (:mod:`stream_ae.cli.boundary`), with its traceback at ``--log-level DEBUG``."""
    from stream_ae.cli.boundary import debugging, run_command
    from stream_ae.logs import quiet_native_stderr, setup_logging
    from stream_ae.settings import load_settings

    args = build_parser().parse_args(argv)
    debug = args.log_level == "DEBUG" or debugging([])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv is None:
        # A real process: TensorFlow's start-up chatter filtered as for stream-ae, the text
        # format, and the Kafka clients' per-attempt connection chatter kept out (the command
        # ends with its own line); a call from Python (tests, notebooks) keeps the caller's
        # stderr and handlers.
        if not debug:
            quiet_native_stderr()
        setup_logging(args.log_level, "text")
    else:
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if args.log_level != "DEBUG":
        # kafka-python narrates every connection at INFO; a failure's reason must not drown.
        logging.getLogger("kafka").setLevel(logging.WARNING)

    def checked_run(args: argparse.Namespace) -> int:
        # The settings are checked first: a mistyped STREAM_AE_* variable fails in a second,
        # not after a training run that reads them only to publish.
        load_settings()
        return int(args._run(args) or 0)

    return run_command(f"stream-ae-train {args.command}", checked_run, args, debug=debug)


if __name__ == "__main__":
    raise SystemExit(main())
