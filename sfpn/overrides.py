"""Dotted-key overrides of nested dataclass configs, each field declaring its allowed values once.

A config is a tree of dataclasses (sections) whose leaves are plain values. A key names a leaf by
its path (``neck.alpha``); a value is converted to the field's annotated type, from text as
``--set key=value`` gives it. A field declares what it allows next to its default, with
:func:`setting`::

    @dataclass
    class NeckConfig:
        fusion_op: str = setting("add", ("add", "concat", "gate"))  # choices
        alpha: float = setting(0.2, NON_NEGATIVE)                     # a range
        semantic: bool = True                                         # its type is all it needs

:func:`set_key` converts and checks one key, :func:`check_config` a whole config (type, range,
choices of every field), so that a run refuses a bad value before it reads any data;
:func:`config_fields` lists every key with its value, type and allowed values (``--list-keys``).
A rule between fields (``check_divisible``, ``check_at_most``, ``check_length``, ...) is one
function that names the values as its caller says: a config's check names the keys
(:func:`key_names`), a module that takes the values as arguments names the arguments.
The detector config (``sfpn.config``) and the training config (``sfpn.engine.config``) both use
this module, which imports nothing from sfpn.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import typing

#: The field metadata entry that holds a field's allowed values.
_ALLOWED = "allowed"


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: ``low <= value <= high`` (``low < value`` when
    ``low_open``; no upper bound when ``high`` is None). A tuple field's range holds for each item."""

    low: float
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE, FRACTION = Range(0, low_open=True), Range(0), Range(1), Range(0, 1)
#: What a field allows: a :class:`Range`, a tuple of choices, or None (any value of its type).
Allowed = typing.Union[Range, tuple, None]


def setting(default, allowed: Allowed = None):
    """A config field with ``default`` and its allowed values: a :class:`Range` or a tuple of choices."""
    if allowed is not None and not isinstance(allowed, (Range, tuple)):
        raise TypeError(f"allowed must be a Range or a tuple of choices, got {allowed!r}")
    return dataclasses.field(default=default, metadata={_ALLOWED: allowed})


def allowed(config_class, name: str) -> Allowed:
    """The allowed values the field ``name`` of ``config_class`` declares: what a module that takes
    the field as an argument checks it against."""
    for f in dataclasses.fields(config_class):
        if f.name == name:
            return f.metadata.get(_ALLOWED)
    raise AttributeError(f"{config_class.__name__} has no field {name!r}")


def describe(allowed_values: Allowed) -> str:
    """``one of ('add', 'concat')``, ``>= 1`` or ``in [0, 1]``."""
    return f"one of {allowed_values}" if isinstance(allowed_values, tuple) else str(allowed_values)


def check_value(name: str, value, allowed_values: Allowed):
    """``value`` if ``allowed_values`` allow it (each item of a tuple, nested too, for a range),
    else a ``ValueError``: ``{name} must be one of (...), got {value}``."""
    if allowed_values is None:
        return value
    if isinstance(allowed_values, Range):
        fits = all(item in allowed_values for item in _flatten(value))
    else:
        fits = value in allowed_values
    if not fits:
        raise ValueError(f"{name} must be {describe(allowed_values)}, got {value!r}")
    return value


def key_names(*keys: str) -> str:
    """``config key 'a'`` or ``config keys 'a', 'b' and 'c'``: how an error names config keys."""
    return f"config key{'s' if len(keys) > 1 else ''} {_enumerate([repr(key) for key in keys])}"


# ------------------------------------------------------------------------- rules between fields
def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """A ``ValueError`` unless ``divisor`` divides ``value``: ``{name} must be divisible by
    {divisor_name} ({divisor}), got {value}``."""
    if value % divisor:
        raise ValueError(f"{name} must be divisible by {divisor_name} ({divisor!r}), got {value!r}")


def check_at_most(name: str, value, bound_name: str, bound) -> None:
    """A ``ValueError`` unless ``value <= bound``: ``{name} must be <= {bound_name} ({bound}), got {value}``."""
    if value > bound:
        raise ValueError(f"{name} must be <= {bound_name} ({bound!r}), got {value!r}")


def check_length(name: str, value: tuple, length: int, what: str) -> None:
    """A ``ValueError`` unless ``value`` has ``length`` entries: ``{name} must have {length}
    entries, {what}, got {len(value)}: {value}``."""
    if len(value) != length:
        raise ValueError(f"{name} must have {length} entries, {what}, got {len(value)}: {value!r}")


def check_same_lengths(names: str, values: typing.Sequence[tuple], what: str) -> None:
    """A ``ValueError`` unless ``values`` are tuples of one length: ``{names} must have {what},
    got 3, 2 and 3 entries``."""
    lengths = [len(value) for value in values]
    if len(set(lengths)) > 1:
        raise ValueError(f"{names} must have {what}, got {_enumerate([str(n) for n in lengths])} entries")


def check_not_empty(name: str, value: tuple) -> None:
    """A ``ValueError`` unless ``value`` has an entry: ``{name} needs at least one entry, got ()``."""
    if not value:
        raise ValueError(f"{name} needs at least one entry, got {value!r}")


class Key(typing.NamedTuple):
    """A settable key of a config: its value, its annotated type and its allowed values."""

    value: object
    hint: object
    allowed: Allowed

    def describe(self) -> str:
        """What the key accepts: its allowed values, with the type for tuples; else its type."""
        if self.allowed is None:
            return type_name(self.hint)
        if isinstance(self.allowed, Range) and typing.get_origin(_without_none(self.hint)) is tuple:
            return f"{type_name(self.hint)}, each {self.allowed}"
        return describe(self.allowed)


def config_fields(config, prefix: str = "") -> dict[str, Key]:
    """Every settable dotted key of a nested dataclass config, in field order."""
    hints = typing.get_type_hints(type(config))
    keys = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(config_fields(value, f"{prefix}{f.name}."))
        else:
            keys[prefix + f.name] = Key(value, hints[f.name], f.metadata.get(_ALLOWED))
    return keys


def config_keys(config) -> dict[str, object]:
    """Every settable dotted key of a nested dataclass config and its current value."""
    return {key: field.value for key, field in config_fields(config).items()}


def check_config(config) -> None:
    """Checks every field of ``config`` against its type and its declared allowed values; a
    ``ValueError`` names the first bad key, what it accepts and the value it has."""
    for key, field in config_fields(config).items():
        if not _conforms(field.hint, field.value):
            raise ValueError(f"{key_names(key)} expects {type_name(field.hint)}, got {field.value!r}")
        check_value(key_names(key), field.value, field.allowed)


def unknown_key_message(key: str, valid: typing.Iterable[str]) -> str:
    """``unknown config key 'x'`` with the closest valid keys, for a typo's sake."""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint} (list them with python -m sfpn.train --list-keys)"


def set_key(config, key: str, value) -> None:
    """Sets ``config.<dotted key> = value`` in place, converted to the field's annotated type and
    checked against its allowed values.

    Text (from a command line) is parsed as a Python literal for non-string fields (``"0.5"``,
    ``"(16, 32)"``, ``"None"``); a scalar given for a tuple field becomes a 1-tuple; an int is
    accepted for a float field. A value of the wrong type or outside the allowed values is
    refused with a ``ValueError`` naming the key and what it accepts.
    """
    *parents, name = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part, None) if _field(node, part) else None
    field = _field(node, name)
    if field is None:
        raise ValueError(unknown_key_message(key, config_keys(config)))
    if dataclasses.is_dataclass(getattr(node, name)):
        raise ValueError(f"{key_names(key)} is a section; set its fields, e.g. {key}.<field>")
    value = _coerce(typing.get_type_hints(type(node))[name], value, key)
    setattr(node, name, check_value(key_names(key), value, field.metadata.get(_ALLOWED)))


def from_dict(config_class, data: dict):
    """The ``config_class`` a nested dict of plain values describes (as ``dataclasses.asdict`` or
    JSON wrote it: lists become tuples); a field the dict lacks takes its default."""
    hints = typing.get_type_hints(config_class)
    unknown = set(data) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} fields {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            values[name] = from_dict(hints[name], value)
        else:
            values[name] = _coerce(hints[name], value, name)
    return config_class(**values)


def parse_value(text: str):
    """A command line's value: a Python literal (number, boolean, tuple, quoted string), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def type_name(hint) -> str:
    """``int``, ``tuple of float``, ``4-tuple of float``, ``str or None``: how an error message
    names a field's type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple of {type_name(args[0])}"
        items = {type_name(arg) for arg in args}
        return f"{len(args)}-tuple" + (f" of {items.pop()}" if len(items) == 1 else "")
    if type(None) in args:
        return " or ".join(type_name(a) for a in args if a is not type(None)) + " or None"
    return hint.__name__


def _enumerate(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _field(node, name: str) -> dataclasses.Field | None:
    if not dataclasses.is_dataclass(node):
        return None
    return next((f for f in dataclasses.fields(node) if f.name == name), None)


def _flatten(value) -> list:
    return [item for v in value for item in _flatten(v)] if isinstance(value, tuple) else [value]


def _without_none(hint):
    """``X`` of ``X | None``; any other hint as it is."""
    args = typing.get_args(hint)
    if type(None) in args:
        (hint,) = [a for a in args if a is not type(None)]
    return hint


def _tuple_items(hint, length: int) -> list | None:
    """The item types of a ``tuple[X, ...]`` (``length`` of them) or fixed tuple hint; None when
    ``length`` does not fit a fixed one."""
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * length
    return list(args) if len(args) == length else None


def _conforms(hint, value) -> bool:
    """Whether ``value`` already is of the type ``hint`` (an int counts as a float, a bool as no number)."""
    if value is None:
        return type(None) in typing.get_args(hint)
    hint = _without_none(hint)
    if typing.get_origin(hint) is tuple:
        items = _tuple_items(hint, len(value)) if isinstance(value, tuple) else None
        return items is not None and all(_conforms(item, v) for item, v in zip(items, value))
    if hint is float:
        return type(value) in (float, int)
    return type(value) is hint


def _coerce(hint, value, key: str):
    """``value`` as the type ``hint`` (int, float, str, bool, ``X | None``, ``tuple[X, ...]``)."""
    expected = f"{key_names(key)} expects {type_name(hint)}, got {value!r}"
    if type(None) in typing.get_args(hint):  # X | None
        if value is None or value == "None":
            return None
        return _coerce(_without_none(hint), value, key)
    if isinstance(value, str):  # command-line text; a quoted string is unquoted
        parsed = parse_value(value)
        value = parsed if hint is not str or isinstance(parsed, str) else value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            value = (value,)
        items = _tuple_items(hint, len(value))
        if items is None:
            raise ValueError(expected)
        try:
            return tuple(_coerce(item, v, key) for item, v in zip(items, value))
        except ValueError:
            raise ValueError(expected) from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value) is not hint:  # exact: True is not an int here
        raise ValueError(expected)
    return value
