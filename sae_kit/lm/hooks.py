"""Hook points: discovery, aliases, capture and intervention.

Any module name PyTorch reports (``model.layers.8``, ``transformer.h.8.mlp``) is a hook point,
and so is a glob over them (``model.layers.*.mlp``). Architecture-independent aliases map onto
module names:

- ``resid.L``: output of decoder block L, the residual stream after it;
- ``mlp.L``: output of block L's MLP;
- ``attn.L``: output of block L's attention (the hidden-state part of its tuple).

Modules that return tuples contribute their first element, the hidden-state tensor. Hooks live
in context managers and are always removed (``finally``).
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

ALIAS_PATTERN = re.compile(r"^(resid|mlp|attn)\.(-?\d+)$")
MLP_CHILD_NAMES = ("mlp",)
ATTN_CHILD_NAMES = ("self_attn", "attn", "attention")


class StopForward(Exception):
    """Raised from a hook once every hooked module has run: nothing after it is computed."""


@dataclass(frozen=True)
class HookPoint:
    """One hookable module, as `sae-kit hooks` lists it."""

    name: str
    """Module name as `named_modules()` reports it."""
    shape: tuple[int, ...] | None
    """Output (hidden-state) shape on the probe input [batch, seq, ...]; None if it did not run."""
    aliases: tuple[str, ...]
    """Aliases (``resid.L`` …) that map to this module."""


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


def aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> module name, for every block: resid.L, mlp.L, attn.L (where they exist)."""
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
    return table


def resolve_hooks(model: nn.Module, requested: list[str] | str) -> list[str]:
    """Module names for hook names, globs or aliases, in the order given, without repeats.

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
        elif any(ch in item for ch in "*?["):
            names = [m for m in modules if fnmatch.fnmatchcase(m, item)]
        else:
            names = [item] if item in module_set else []
        if not names:
            close = difflib.get_close_matches(item, list(table) + modules, n=6, cutoff=0.5)
            suggestion = ", ".join(close) if close else f"resid.0 … resid.{n_layers - 1}, mlp.L, attn.L"
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


@contextmanager
def capture(model: nn.Module, module_names: list[str], *, stop: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the hidden-state output of each module in `module_names` during a forward pass.

    Yields a dict filled in by the forward pass: name -> tensor [batch, seq, d] (detached).
    With `stop`, the forward pass is cut short once all modules have run (raise/catch of
    `StopForward` — call the model through `run_to_hooks`), so layers past the last hook cost
    nothing.
    """
    captured: dict[str, torch.Tensor] = {}
    wanted = set(module_names)
    modules = dict(model.named_modules())
    handles = []

    def make_hook(name: str):
        def record_output(_module, _inputs, output):
            captured[name] = hidden_of(output).detach()
            if stop and wanted.issubset(captured):
                raise StopForward

        return record_output

    try:
        for name in module_names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_to_hooks(model: nn.Module, input_ids: torch.Tensor, module_names: list[str], **kwargs) -> dict[str, torch.Tensor]:
    """One forward pass that stops after the last of `module_names`; returns their outputs.

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
def intervene(model: nn.Module, module_name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the hidden-state output of `module_name` by `fn(hidden)` while the block is active.

    hidden: [batch, seq, d] -> [batch, seq, d]. Tuple outputs keep their other elements.
    """
    module = dict(model.named_modules()).get(module_name)
    if module is None:
        raise SaeKitError(f"no module named {module_name!r} in {type(model).__name__}")

    def replace_output(_module, _inputs, output):
        return with_hidden(output, fn(hidden_of(output)))

    handle = module.register_forward_hook(replace_output)
    try:
        yield
    finally:
        handle.remove()


def list_hook_points(model: nn.Module, probe_len: int = 4) -> list[HookPoint]:
    """Every module with a tensor output, in execution order, with its shape on a probe input."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def record_shape(_module, _inputs, output):
            try:
                shapes[name] = tuple(hidden_of(output).shape)
            except TypeError:
                return
            if name not in order:
                order.append(name)

        return record_shape

    named = [(n, m) for n, m in model.named_modules() if n]
    try:
        for name, module in named:
            handles.append(module.register_forward_hook(make_hook(name)))
        device = next(model.parameters()).device
        probe = torch.zeros(1, probe_len, dtype=torch.long, device=device)
        with torch.no_grad():
            model(input_ids=probe, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    by_module: dict[str, list[str]] = {}
    for alias, name in aliases(model).items():
        by_module.setdefault(name, []).append(alias)
    return [HookPoint(name, shapes.get(name), tuple(by_module.get(name, ()))) for name in order]


def format_hook_points(points: list[HookPoint]) -> str:
    """A table for the terminal: module name, output shape, aliases."""
    width = max((len(p.name) for p in points), default=10)
    lines = [f"{'module':<{width}}  {'output shape':<16}  aliases"]
    for point in points:
        shape = "x".join(str(s) for s in point.shape) if point.shape else "-"
        lines.append(f"{point.name:<{width}}  {shape:<16}  {', '.join(point.aliases)}")
    return "\n".join(lines)
