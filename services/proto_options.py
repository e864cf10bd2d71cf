"""A task's options (models/options.py) <-> its typed RPC's options message, by field name.

The option dataclass is the one declaration; the proto message carries the same names. An
``optional`` scalar that is unset, an enum at its UNSPECIFIED value and an empty repeated field
mean "the default". Enum values map to the option's choices by name: ``LARGE_IMAGE_MODE_TILE``
is ``"tile"``. Used by the servicers (proto -> options) and the client (keywords -> proto).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from models.errors import InvalidInputError
from models.options import Options


def _enum_prefix(field: FieldDescriptor) -> str:
    """``LARGE_IMAGE_MODE_`` for ``enum LargeImageMode``: what precedes each value's choice name."""
    name = field.enum_type.name
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper() + "_"


def _from_enum(field: FieldDescriptor, number: int) -> str | None:
    value = field.enum_type.values_by_number.get(number)
    if value is None:
        choices = [v.name.removeprefix(_enum_prefix(field)) for v in field.enum_type.values if v.number]
        raise InvalidInputError(f"unknown {field.name} {number}; use {' or '.join(choices)}")
    choice = value.name.removeprefix(_enum_prefix(field)).lower()
    return None if choice == "unspecified" else choice


def options_from_proto(cls: type[Options], message: Message) -> dict[str, Any]:
    """The options ``message`` sets, by field name (what it leaves unset is absent)."""
    given: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in cls.__dataclass_fields__:  # type: ignore[attr-defined]
            continue
        value = getattr(message, field.name)
        if field.is_repeated:
            given[field.name] = tuple(value) if value else None
        elif field.enum_type is not None:
            given[field.name] = _from_enum(field, value)
        elif field.has_presence and not message.HasField(field.name):
            continue
        else:
            given[field.name] = value
    return given


def proto_option_names(message: type[Message]) -> set[str]:
    """The option names an options message carries."""
    return {field.name for field in message.DESCRIPTOR.fields}


def options_to_proto(cls: type[Options], message: Message, given: Mapping[str, Any]) -> Message:
    """Fill ``message`` from keyword arguments (field or flag names; None: leave unset, the
    server's default). TypeError for a name the RPC does not carry."""
    aliases = cls.aliases()
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in given.items():
        name = aliases.get(key, key)
        if name not in fields:
            raise TypeError(
                f"unknown option `{key}` for {message.DESCRIPTOR.name}; it takes "
                f"{sorted(proto_option_names(type(message)))}"
            )
        if value is None:
            continue
        field = fields[name]
        if field.is_repeated:
            getattr(message, name).extend(value)
        elif field.enum_type is not None:
            enum_name = _enum_prefix(field) + str(value).upper()
            if enum_name not in field.enum_type.values_by_name:
                raise ValueError(f"{name} must be one of {[v.lower() for v in _choices(field)]}, got {value!r}")
            setattr(message, name, field.enum_type.values_by_name[enum_name].number)
        else:
            setattr(message, name, value)
    return message


def _choices(field: FieldDescriptor) -> list[str]:
    return [v.name.removeprefix(_enum_prefix(field)) for v in field.enum_type.values if v.number]
