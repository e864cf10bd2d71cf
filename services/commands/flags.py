"""Command-line flags derived from a task's options (models/options.py): one declaration, so a
flag's name, type, choices, default and help never drift from the option's."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from typing import Any

from models.options import Options, base_type, spec_of


def add_option_flags(parser: argparse.ArgumentParser, cls: type[Options], *, skip: Collection[str] = ()) -> None:
    """``--score-threshold`` etc., one per option of ``cls`` (its flag name where it has one). Every
    flag defaults to None: the option's own default applies, stated in the help."""
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        spec, kind = spec_of(field), base_type(field, cls)
        flag = "--" + (spec.flag or field.name).replace("_", "-")
        shown = field.default not in (None, (), False)
        text = spec.help + (f" (default {field.default})" if shown else "")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action="store_true", default=None, help=text)
        elif kind is tuple:
            parser.add_argument(flag, dest=field.name, nargs="+", default=None, metavar="NAME", help=text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=None, choices=spec.choices, help=text)


def options_from_args(args: argparse.Namespace, cls: type[Options]) -> dict[str, Any]:
    """The options the command line gave (field name -> value; None: not given)."""
    return {name: getattr(args, name) for name in cls.names() if hasattr(args, name)}
