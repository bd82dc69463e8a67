"""Frozen config dataclasses: one JSON round-trip for all of them, and command-line flags made
from their fields, so that every name, default and help text is written once.

A config is written into its artifact's JSON and read back by `resume`, `load_autoencoder` and
friends; `JsonConfig` keeps the rules the same everywhere: unknown fields are an error (the file
was written by a newer sae-kit), and JSON lists become tuples where the field is one.

`add_config_flags(parser, Config)` adds one flag per field: the name from the field (or a
shorter spelling given by the command), the help text from the docstring under the field, the
type and the choices from its annotation, and the default shown in the help. Flags default to
None ("not given"), so `given_values` can tell what the user set from what the dataclass
defaults, which is what `--resume` needs to fill the rest from a checkpoint.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import math
import shlex
import sys
import textwrap
import types
import typing
from typing import Any, TypeVar

from sae_kit.errors import SaeKitError

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclasses: to_dict / from_dict / to_json / from_json / replace, and the
    checks every config shares (subclasses with a `__post_init__` of their own call this one)."""

    config_name = "config"
    """How errors name this kind of config ("training config", "autoencoder config" …)."""
    nonempty: tuple[str, ...] = ()
    """String fields that must not be empty (paths: an empty --out would mean the current directory)."""

    def __post_init__(self) -> None:
        """Every number finite (NaN and infinity mean no setting), every `nonempty` string non-empty."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise SaeKitError(f"--{f.name.replace('_', '-')} must be a finite number (got {value})")
            if f.name in self.nonempty and isinstance(value, str) and not value.strip():
                raise SaeKitError(f"--{f.name.replace('_', '-')} is empty; give a path")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise SaeKitError(f"unknown {cls.config_name} field(s): {', '.join(unknown)}; "
                              "written by a newer sae-kit?")
        data = {name: tuple(value) if isinstance(value, list) and str(fields[name].type).startswith("tuple")
                else value for name, value in data.items()}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    def replace(self: C, **changes) -> C:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """Every field with its value, one per line, '(default)' or '(set)' beside it."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            mark = "" if f.default is dataclasses.MISSING else ("  (default)" if value == default else "  (set)")
            lines.append(f"  {f.name:<24} {value!r}{mark}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- parsing values


def parse_count(text: str) -> int:
    """'2000000', '2M', '500k', '1.5G', '2_000' -> int (a whole, finite number)."""
    text = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 2000000, 2M or 500k)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite count: {text!r}")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    return int(value)


def parse_number(text: str) -> float:
    """A finite float ('nan' and 'inf' are refused: no setting means them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def list_of(kind):
    """A parser of comma-separated values of `kind` ('1,2,5' -> [1, 2, 5]); empty items are skipped."""
    def parse(text: str) -> list:
        items = [item.strip() for item in str(text).split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [kind(item) for item in items]
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise argparse.ArgumentTypeError(f"in the list {text!r}: {err}") from None
    parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
    return parse


def _one_item(kind):
    """A parser of one list item (commas kept), returning a one-item list for `_Extend`."""
    def parse(text: str) -> list:
        return [kind(text)]
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


# ----------------------------------------------------------------------------- fields -> flags


def field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source with ast), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, following in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _base_type(hint):
    """`X | None` and `Optional[X]` -> X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _scalar_parser(kind):
    return {int: parse_count, float: parse_number}.get(kind, kind if kind in (str,) else str)


class _Extend(argparse.Action):
    """Accumulate list values over repeats of a flag: `--hook a --hook b,c` -> [a, b, c]."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, current + list(values))


def _deprecated(new_flag: str, const: Any = dataclasses.MISSING, base: type[argparse.Action] | None = None):
    """An action for an old spelling: warns on stderr, then does what `new_flag` does."""

    class Deprecated(base or argparse.Action):
        def __init__(self, option_strings, dest, **kwargs):
            if const is not dataclasses.MISSING:
                kwargs["nargs"] = 0
                kwargs.pop("type", None)
                kwargs.pop("choices", None)
                kwargs.pop("metavar", None)
            super().__init__(option_strings, dest, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{parser.prog}: warning: {option_string} is deprecated and goes in the next release; "
                  f"use {new_flag}", file=sys.stderr)
            if const is not dataclasses.MISSING:
                setattr(namespace, self.dest, const)
            elif base is not None:
                super().__call__(parser, namespace, values, option_string)
            else:
                setattr(namespace, self.dest, values)

    return Deprecated


@dataclasses.dataclass(frozen=True)
class FlagStyle:
    """How one command spells the flags of a config (see `add_config_flags`)."""

    names: dict[str, str] = dataclasses.field(default_factory=dict)
    metavars: dict[str, str] = dataclasses.field(default_factory=dict)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()
    verbatim: tuple[str, ...] = ()
    enforce_required: bool = True


def _flag_kwargs(f: dataclasses.Field, hint, doc: str, style: FlagStyle) -> dict[str, Any] | None:
    """argparse keyword arguments for field `f` of annotation `hint`, or None if it is no flag."""
    if f.name in style.defaults:
        default = f"default: {style.defaults[f.name]!r}"
    elif f.name in style.required or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
        default = "required"
    else:
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = f"default: {value!r}"
    kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{doc} ({default})".replace("%", "%%")}
    if f.name in style.required and style.enforce_required:
        kwargs["required"] = True
    hint = _base_type(hint)
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = typing.get_args(hint)
    elif typing.get_origin(hint) is tuple:
        kind = _scalar_parser(typing.get_args(hint)[0])
        verbatim = f.name in style.verbatim
        plain = style.names.get(f.name, f.name).upper()
        kwargs.update(type=_one_item(kind) if verbatim else list_of(kind), action=_Extend,
                      metavar=style.metavars.get(f.name, plain if verbatim else plain + "[,…]"))
    elif hint in (int, float, str):
        kwargs["type"] = _scalar_parser(hint)
        metavar = style.metavars.get(f.name, {int: "N", float: "X", str: None}[hint])
        if metavar:
            kwargs["metavar"] = metavar
    else:
        return None  # dicts, nested configs: not flags
    return kwargs


def add_config_flags(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
                     deprecated: dict[str, str | tuple[str, Any]] | None = None, **style) -> list[str]:
    """Add a flag for every field of dataclass `cls` (except `skip`); returns the field names added.

    `style` (`FlagStyle`): names: field -> flag spelling without dashes where it differs from the
    field ('archs' -> 'arch'); required: fields the command needs (argparse refuses a command line
    without them, exit status 2, unless `enforce_required` is False: `train --resume` fills them
    from the checkpoint); defaults: defaults shown in the help where the command's differ from the
    dataclass' (the demo's quick mode); verbatim: tuple fields whose items may hold commas
    (prompts), so each repeat of the flag is one item, where other tuple fields also take
    comma-separated lists (`--arch sae,topk`, `--k 16,32`); metavars. deprecated: old flag -> the
    new flag it stands for, or (new flag, constant) for an old switch that sets a field to a
    constant (`--no-logits`). Every flag's dest is its field name and its default None.
    """
    style = FlagStyle(**style)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    flags: dict[str, tuple[str, dict]] = {}
    for f in dataclasses.fields(cls):
        kwargs = None if f.name in skip else _flag_kwargs(f, hints[f.name], docs.get(f.name, ""), style)
        if kwargs is not None:
            flag = "--" + style.names.get(f.name, f.name).replace("_", "-")
            parser.add_argument(flag, **kwargs)
            flags[f.name] = (flag, kwargs)
    for old, target in (deprecated or {}).items():
        _add_deprecated(parser, cls, flags, old, target)
    return list(flags)


def _add_deprecated(parser, cls, flags: dict[str, tuple[str, dict]], old: str, target) -> None:
    """A hidden flag `old` that warns and then acts as the new flag `target` names."""
    new_flag, const = target if isinstance(target, tuple) else (target, dataclasses.MISSING)
    field_name = next((name for name, (flag, _) in flags.items()
                       if new_flag in (flag, "--no-" + flag.removeprefix("--"))), None)
    if field_name is None:
        raise ValueError(f"deprecated {old} names no flag of {cls.__name__}: {new_flag}")
    kwargs = dict(flags[field_name][1], help=argparse.SUPPRESS)
    kwargs.pop("required", None)
    base = kwargs.pop("action", None)
    kwargs["action"] = _deprecated(new_flag, const, None if base is argparse.BooleanOptionalAction else base)
    parser.add_argument(old, **kwargs)


def given_values(args: argparse.Namespace, cls, fields: list[str] | None = None) -> dict:
    """{field: value} of the flags of `cls` that were given (not None), lists made tuples."""
    names = fields if fields is not None else [f.name for f in dataclasses.fields(cls)]
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_args(cls: type[C], args: argparse.Namespace, base: dict | None = None,
                     fields: list[str] | None = None) -> C:
    """`cls` built from `base` (e.g. a checkpoint's saved config) overridden by the given flags."""
    merged = {**(base or {}), **given_values(args, cls, fields)}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in merged
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SaeKitError("needs " + " and ".join("--" + name.replace("_", "-") for name in missing))
    return cls.from_dict(merged) if issubclass(cls, JsonConfig) else cls(**merged)


def command_line(prog: str, configs: list, names: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> str:
    """The shell command that reproduces `configs` (frozen dataclasses whose flags `prog` takes):
    every field that differs from its default (and every required one), in canonical spelling."""
    names = names or {}
    parts = shlex.split(prog)
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if value == default or value is None or isinstance(value, dict):
                continue
            flag = "--" + names.get(f.name, f.name).replace("_", "-")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
                continue
            for item in value if isinstance(value, tuple) else (value,):
                text = format(item, "g") if isinstance(item, float) else str(item)
                parts += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    return shlex.join([*parts, *extra])
