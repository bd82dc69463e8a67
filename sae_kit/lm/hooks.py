"""Hook points: discovery, aliases, capture and intervention.

Any module name PyTorch reports (``model.layers.8``, ``transformer.h.8.mlp``) is a hook point,
and so is a glob over them (``model.layers.*.mlp``). Architecture-independent aliases map onto
module names:

- ``resid.L``: output of decoder block L, the residual stream after it;
- ``mlp.L``: output of block L's MLP;
- ``attn.L``: output of block L's attention (the hidden-state part of its tuple);
- ``mlp_in.L``: INPUT of block L's MLP (after the pre-MLP norm), what a transcoder reads.

A module's input is a hook point too: ``MODULE:input`` (``model.layers.3.mlp:input``, the name
``mlp_in.3`` resolves to) is captured by a forward pre-hook, before the module runs. Modules that
return tuples contribute their first element, the hidden-state tensor; a module's input is its
first tensor argument. Hooks live in context managers and are always removed (``finally``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sae_kit.errors import SaeKitError

ALIAS_PATTERN = re.compile(r"^(resid|mlp_in|mlp|attn)\.(-?\d+)$")
INPUT_SUFFIX = ":input"
"""`MODULE:input` names the input of MODULE (a forward pre-hook) rather than its output."""
MLP_CHILD_NAMES = ("mlp",)
ATTN_CHILD_NAMES = ("self_attn", "attn", "attention")


class StopForward(Exception):
    """Raised from a hook once every hooked module has run: nothing after it is computed."""


@dataclass(frozen=True)
class HookPoint:
    """One hookable module, as `sae-kit hooks` lists it."""

    name: str
    """Module name as `named_modules()` reports it (``MODULE:input`` for a module's input)."""
    shape: tuple[int, ...] | None
    """Hidden-state shape on the probe input [batch, seq, ...]; None if it did not run."""
    aliases: tuple[str, ...]
    """Aliases (``resid.L`` …) that map to this hook point."""


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Name and list of the decoder blocks: the ModuleList with one entry per layer."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers)
    ]
    if not candidates:
        raise SaeKitError(f"could not find the decoder blocks of {type(model).__name__}; use module names as hooks")
    return min(candidates, key=lambda item: item[0].count("."))  # the outermost one


def split_hook_point(name: str) -> tuple[str, bool]:
    """(module name, whether the point is the module's input) of a resolved hook point."""
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    return name, False


def aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> hook point, for every block: resid.L, mlp.L, attn.L, mlp_in.L (where they exist)."""
    blocks_name, blocks = decoder_blocks(model)
    table: dict[str, str] = {}
    for layer, block in enumerate(blocks):
        prefix = f"{blocks_name}.{layer}"
        table[f"resid.{layer}"] = prefix
        children = dict(block.named_children())
        for alias, child_names in (("mlp", MLP_CHILD_NAMES), ("attn", ATTN_CHILD_NAMES)):
            child = next((c for c in child_names if c in children), None)
            if child is not None:
                table[f"{alias}.{layer}"] = f"{prefix}.{child}"
        if f"mlp.{layer}" in table:
            table[f"mlp_in.{layer}"] = table[f"mlp.{layer}"] + INPUT_SUFFIX
    return table


def resolve_hooks(model: nn.Module, requested: list[str] | str) -> list[str]:
    """Hook points for hook names, globs or aliases, in the order given, without repeats: module
    names, and ``MODULE:input`` for module inputs (``mlp_in.L``, or a name or glob + ``:input``).

    Raises SaeKitError listing the closest valid names for anything that matches nothing.
    """
    if isinstance(requested, str):
        requested = [requested]
    modules = [name for name, _ in model.named_modules() if name]
    module_set = set(modules)
    table = aliases(model)
    n_layers = sum(1 for a in table if a.startswith("resid."))
    resolved: list[str] = []
    for item in requested:
        match = ALIAS_PATTERN.match(item)
        if match:
            kind, layer = match.group(1), int(match.group(2))
            if layer < 0:  # resid.-1 is the last block, as in Python indexing
                item = f"{kind}.{layer + n_layers}"
            names = [table[item]] if item in table else []
        else:
            pattern, is_input = split_hook_point(item)
            if any(ch in pattern for ch in "*?["):
                names = [m for m in modules if fnmatch.fnmatchcase(m, pattern)]
            else:
                names = [pattern] if pattern in module_set else []
            if is_input:
                names = [n + INPUT_SUFFIX for n in names]
        if not names:
            close = difflib.get_close_matches(item, list(table) + modules, n=6, cutoff=0.5)
            suggestion = ", ".join(close) if close else f"resid.0 … resid.{n_layers - 1}, mlp.L, attn.L, mlp_in.L"
            raise SaeKitError(
                f"unknown hook {item!r}; closest valid names: {suggestion} (`sae-kit hooks` lists them all)"
            )
        resolved.extend(n for n in names if n not in resolved)
    return resolved


def hidden_of(output) -> torch.Tensor:
    """The hidden-state tensor of a module output (first element of a tuple / ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"module output of type {type(output).__name__} holds no hidden-state tensor")


def with_hidden(output, hidden: torch.Tensor):
    """`output` with its hidden-state tensor replaced by `hidden` (same container type)."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"cannot replace the hidden state in a {type(output).__name__}")


def input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-state input of a module call: its first tensor argument (positional, else keyword)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("the module was called without a tensor argument")


def with_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """(args, kwargs) with the hidden-state input (see `input_of`) replaced by `hidden`."""
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor):
            return (*args[:i], hidden, *args[i + 1 :]), kwargs
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: hidden}


def _module(model: nn.Module, point: str) -> tuple[nn.Module, bool]:
    """The module a resolved hook point sits on, and whether the point is its input."""
    name, is_input = split_hook_point(point)
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise SaeKitError(f"no module named {name!r} in {type(model).__name__}")
    return module, is_input


def _record(module: nn.Module, is_input: bool, record: Callable[[torch.Tensor], None]):
    """Register a hook calling `record(hidden)` with the module's input (pre-hook) or output; returns its handle."""
    if is_input:
        return module.register_forward_pre_hook(lambda _m, args, kwargs: record(input_of(args, kwargs)),
                                                with_kwargs=True)
    return module.register_forward_hook(lambda _m, _inputs, output: record(hidden_of(output)))


@contextmanager
def capture(model: nn.Module, module_names: list[str], *, stop: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden state at each hook point in `module_names` during a forward pass: a
    module's output, or its input for ``MODULE:input`` points.

    Yields a dict filled in by the forward pass: name -> tensor [batch, seq, d] (detached).
    With `stop`, the forward pass is cut short once all points have been seen (raise/catch of
    `StopForward` — call the model through `run_to_hooks`), so layers past the last hook cost
    nothing (an input point stops the pass before its module even runs).
    """
    captured: dict[str, torch.Tensor] = {}
    wanted = set(module_names)
    handles = []

    def make_recorder(name: str):
        def record(hidden: torch.Tensor) -> None:
            captured[name] = hidden.detach()
            if stop and wanted.issubset(captured):
                raise StopForward

        return record

    try:
        for name in module_names:
            handles.append(_record(*_module(model, name), make_recorder(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_to_hooks(model: nn.Module, input_ids: torch.Tensor, module_names: list[str], **kwargs) -> dict[str, torch.Tensor]:
    """One forward pass that stops after the last of the hook points `module_names`; returns the
    hidden state at each (a module's output, or its input for ``MODULE:input``).

    input_ids: [batch, seq] -> {name: [batch, seq, d]}.
    """
    with capture(model, module_names, stop=True) as captured, torch.no_grad():
        try:
            model(input_ids=input_ids, use_cache=False, **kwargs)
        except StopForward:
            pass
    missing = [n for n in module_names if n not in captured]
    if missing:
        raise SaeKitError(f"hook(s) {', '.join(missing)} did not run in the forward pass")
    return captured


@contextmanager
def intervene(model: nn.Module, module_name: str, fn: Callable[..., torch.Tensor], *,
              read: str | None = None) -> Iterator[None]:
    """Replace the hidden state at hook point `module_name` (a module's output, or its input for
    ``MODULE:input``) by `fn(hidden)` while the block is active.

    With `read`, another hook point that runs earlier in the same forward pass, the replacement
    is `fn(hidden, source)` with `source` the hidden state at `read` (a transcoder reads the MLP's
    input and replaces its output); `read` equal to `module_name` gives `fn(hidden, hidden)`.
    hidden, source: [batch, seq, d] -> [batch, seq, d]. Tuple outputs keep their other elements.
    """
    module, is_input = _module(model, module_name)
    handles = []
    seen: dict[str, torch.Tensor] = {}

    def new_hidden(hidden: torch.Tensor) -> torch.Tensor:
        if read is None:
            return fn(hidden)
        if read == module_name:
            return fn(hidden, hidden)
        source = seen.pop("source", None)
        if source is None:
            raise SaeKitError(f"hook point {read!r} did not run before {module_name!r} in this forward pass")
        return fn(hidden, source)

    def remember_source(hidden: torch.Tensor) -> None:
        seen["source"] = hidden

    def replace_input(_module, args, kwargs):
        return with_input(args, kwargs, new_hidden(input_of(args, kwargs)))

    def replace_output(_module, _inputs, output):
        return with_hidden(output, new_hidden(hidden_of(output)))

    try:
        if read is not None and read != module_name:
            handles.append(_record(*_module(model, read), remember_source))
        handles.append(module.register_forward_pre_hook(replace_input, with_kwargs=True) if is_input
                       else module.register_forward_hook(replace_output))
        yield
    finally:
        for handle in handles:
            handle.remove()


def list_hook_points(model: nn.Module, probe_len: int = 4) -> list[HookPoint]:
    """Every module with a tensor output, in execution order, with its shape on a probe input;
    module inputs that have an alias (``mlp_in.L``) are listed just before their module."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []
    table = aliases(model)
    input_points = {split_hook_point(p)[0] for p in table.values() if split_hook_point(p)[1]}

    def make_hook(name: str):
        def record_shape(hidden_fn):
            try:
                shapes[name] = tuple(hidden_fn().shape)
            except TypeError:
                return
            if name not in order:
                order.append(name)

        return record_shape

    named = [(n, m) for n, m in model.named_modules() if n]
    try:
        for name, module in named:
            if name in input_points:
                record_in = make_hook(name + INPUT_SUFFIX)
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, kwargs, rec=record_in: rec(lambda: input_of(args, kwargs)), with_kwargs=True))
            record_out = make_hook(name)
            handles.append(module.register_forward_hook(
                lambda _m, _inputs, output, rec=record_out: rec(lambda: hidden_of(output))))
        device = next(model.parameters()).device
        probe = torch.zeros(1, probe_len, dtype=torch.long, device=device)
        with torch.no_grad():
            model(input_ids=probe, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    by_module: dict[str, list[str]] = {}
    for alias, name in table.items():
        by_module.setdefault(name, []).append(alias)
    return [HookPoint(name, shapes.get(name), tuple(by_module.get(name, ()))) for name in order]


def format_hook_points(points: list[HookPoint]) -> str:
    """A table for the terminal: hook point (module name, or MODULE:input), hidden-state shape, aliases."""
    width = max((len(p.name) for p in points), default=10)
    lines = [f"{'module':<{width}}  {'shape':<16}  aliases"]
    for point in points:
        shape = "x".join(str(s) for s in point.shape) if point.shape else "-"
        lines.append(f"{point.name:<{width}}  {shape:<16}  {', '.join(point.aliases)}")
    return "\n".join(lines)
