"""Command-line flags derived from the dataclasses that declare them once: a task's request
options (models/options.py) and a training run's settings (models/train/*.py), so a flag's name,
type, choices, default and help never drift from the field's."""

from __future__ import annotations

import argparse
import dataclasses
import json
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


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: Collection[str] = ()) -> None:
    """One flag per field of the config dataclass ``cls`` declared with ``option`` (a training
    run's settings): ``--epochs``, its flag name where it has one (``--arch``). A True bool is
    turned off by ``--no-<name>`` (or by its flag: ``--freeze-encoder``), a dict is JSON, and a
    field without a default is a required flag. Every flag defaults to None: the config's own
    default applies, stated in the help."""
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("spec")
        if spec is None or field.name in skip:
            continue
        kind, flag = base_type(field, cls), (spec.flag or field.name).replace("_", "-")
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        required = default is dataclasses.MISSING
        shown = not (required or isinstance(default, bool) or default in (None, "", (), {}) or "default" in spec.help)
        text = spec.help + (f" (default {default})" if shown else "")
        if kind is bool and default is True:
            name = flag if spec.flag else f"no-{flag}"
            parser.add_argument(
                f"--{name}",
                dest=field.name,
                action="store_const",
                const=False,
                default=None,
                help=text if spec.flag else f"turn off: {text}",
            )
        elif kind is bool:
            parser.add_argument(f"--{flag}", dest=field.name, action="store_const", const=True, default=None, help=text)
        else:
            parse = json.loads if kind is dict else kind
            parser.add_argument(
                f"--{flag}",
                dest=field.name,
                type=parse,
                default=None,
                choices=spec.choices,
                required=required,
                help=text,
            )


def config_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings the command line gave (field name -> value; a flag not given is absent)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
