"""Command-line options generated from the configuration dataclasses, so each default lives once.

A field becomes ``--field-name`` (or ``metadata["option"]``), with ``metadata["help"]`` as its
help (or ``helps[name]`` for classes that carry no metadata, such as
:class:`stream_ae.model.network.ModelSpec`), its type and choices from the annotation, and the
dataclass default shown in the help. Fields with ``metadata["cli"] = False`` are not options.

Every generated option parses to ``None`` unless given, so :func:`build` can apply only what
the user said to any base: the dataclass defaults, or a champion's configuration for a refit.

>>> import argparse
>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Demo:
...     size: int = field(default=3, metadata={"help": "how many"})
...     mode: Literal["a", "b"] = field(default="a", metadata={"help": "which one"})
>>> parser = argparse.ArgumentParser()
>>> add_options(parser, Demo)
>>> build(Demo, parser.parse_args(["--size", "5"]))
Demo(size=5, mode='a')
>>> build(Demo, parser.parse_args([]), base=Demo(size=7, mode="b"))
Demo(size=7, mode='b')
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def cli_fields(cls: type, exclude: Iterable[str] = ()) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are command-line options."""
    skip = set(exclude)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and f.name not in skip and f.init
    ]


def option_name(f: dataclasses.Field[Any]) -> str:
    """``--field-name``, or the field's ``metadata["option"]``."""
    return str(f.metadata.get("option", "--" + f.name.replace("_", "-")))


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _base_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(the Python type to parse, the choices) of an annotation, ``X | None`` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner[0])
    if origin is Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    return annotation, None


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
    shown_defaults: Mapping[str, str] | None = None,
    defaults_note: str | None = None,
    base: Any = None,
) -> None:
    """Add one option per field of ``cls`` to ``parser`` (see the module docstring).

    ``base`` (an instance of ``cls``) is the default shown, when the command builds on it
    rather than on ``cls()`` (``train`` builds on the default detector).

    ``shown_defaults`` replaces the default shown for some fields (one the class cannot express,
    such as a horizon that depends on the kind); ``defaults_note`` replaces every shown default
    (e.g. "the champion's" for a refit, where an option not given keeps the champion's value).
    """
    module = sys.modules[cls.__module__]
    hints = typing.get_type_hints(cls, vars(module))
    for f in cli_fields(cls, exclude):
        help_text = f.metadata.get("help") or (helps or {}).get(f.name)
        if not help_text:
            raise TypeError(f"{cls.__name__}.{f.name} has no help text")
        kind, choices = _base_type(hints[f.name])
        default = getattr(base, f.name) if base is not None else _default(f)
        shown = defaults_note or (shown_defaults or {}).get(f.name) or str(default)
        help_text = f"{help_text} (default: {shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if choices:
                kwargs["choices"] = choices
            elif "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(option_name(f), **kwargs)


def given(cls: type, args: argparse.Namespace, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The options of ``cls`` given on the command line, by field name."""
    return {
        f.name: getattr(args, f.name)
        for f in cli_fields(cls, exclude)
        if getattr(args, f.name, None) is not None
    }


def build(cls: type[T], args: argparse.Namespace, base: T | None = None, **fixed: Any) -> T:
    """``base`` (default: ``cls()``) with the options given in ``args`` and ``fixed`` applied."""
    start = base if base is not None else cls()
    return dataclasses.replace(start, **{**given(cls, args), **fixed})  # type: ignore[type-var]
