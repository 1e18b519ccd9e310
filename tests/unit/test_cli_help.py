"""Every command's ``--help`` ends with 1-3 real examples, and each example parses."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest

from stream_ae.cli import app

ALL = {**app.COMMANDS, **app.plugin_commands()}


def command_line(example: str) -> list[str]:
    """The arguments of the ``stream-ae`` call in an example (inside ``eval "$(...)"`` too)."""
    match = re.search(r"stream-ae ([^\")]*)", example)
    assert match, f"not a stream-ae command line: {example!r}"
    return shlex.split(match.group(1))


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_command_has_examples_that_parse(name: str) -> None:
    module = importlib.import_module(ALL[name][0])
    examples = module.EXAMPLES
    assert 1 <= len(examples) <= 3, name
    for example in examples:
        argv = command_line(example)
        assert argv[0] == name, example
        app.build_parser(only=name).parse_args(argv)  # SystemExit (exit 2) if it does not parse


@pytest.mark.parametrize("name", sorted(ALL))
def test_help_ends_with_the_examples_and_has_no_markup(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        app.main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text, text
    tail = text.rstrip().splitlines()
    module = importlib.import_module(ALL[name][0])
    assert [line.strip() for line in tail[-len(module.EXAMPLES) :]] == list(module.EXAMPLES)


def test_an_example_that_does_not_parse_is_caught() -> None:
    with pytest.raises(SystemExit):
        app.build_parser(only="alerts").parse_args(command_line("stream-ae alerts --nope"))
