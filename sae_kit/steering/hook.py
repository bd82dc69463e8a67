"""Steering: clamp, ablate or add SAE features while the model runs (and generates).

Split the hooked activation into what the SAE explains and what it does not,
x = x̂(z) + error(x), and change only the explained part (Templeton et al. 2024, "Scaling
Monosemanticity", feature steering):

- clamp feature i to c:   x' = x + (c − z_i) · W_dec,i      (the error term is kept);
- ablate feature i:       clamp to 0;
- add α times feature i:  x' = x + α · W_dec,i               (the additive steering vector).

Transcoders steer the same way at the activation they predict, the MLP's output, with z read
from the MLP's input in the same forward pass (`RunInfo.splice_hooks`): out' = out + (c − z_i(x))
· W_dec,i, x the MLP input, so the transcoder's error (out − ŷ(x)) is kept as well.

Values are absolute, or multiples of the feature's maximum activation over the store (``10x``,
``-5x``). Templeton et al. found −10 … 10 useful on a large model; in our runs on SmolLM2-135M
the text stayed fluent only up to about 1.5×, so sweep first. Interventions combine: all clamps
read z from the unsteered x, then the additions are applied.

`steer(model, sae, interventions)` installs the change at the SAE's hook point for the duration
of a ``with`` block. It works with Hugging Face ``generate`` and its KV cache: the hooked module
sees the prompt [batch, prompt_len, d] once, then [batch, 1, d] per new token, so each position is
steered exactly once; with ``positions="generated"`` only positions ≥ prompt_len are changed
(the first new token is therefore predicted from unsteered activations). Positions are counted
from the cache length the model receives, so ``use_cache=False`` gives the same result. A BOS
token at position 0 is never steered: the SAE was not trained on BOS activations (the store's
reader skips them), so its encoding there means nothing.

Only the clamped features are encoded, through the model's `subset_encoder`: for separable
models (ReLU and linear encoders) that is z_i = ReLU((x − b_dec) · W_enc[:, i] + b_enc[i]) for
the clamped i alone; TopK needs every pre-activation to know whether i is among the k largest,
so it encodes in full.

Experiments built on this: `sae_kit.steering.sweep` (`compare`, `steering_sweep`: texts, KL and
promoted-token shifts against the baseline), `sae_kit.steering.report` (`write_report`: markdown
and offline HTML); the command is `sae-kit steer`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sae_kit.autoencoders import RunInfo
from sae_kit.errors import SaeKitError
from sae_kit.lm.hooks import intervene, resolve_hooks

Kind = Literal["clamp", "ablate", "add"]
KINDS: tuple[str, ...] = ("clamp", "ablate", "add")
Positions = Literal["all", "generated"]
POSITIONS: tuple[str, ...] = ("all", "generated")

_SPEC = re.compile(r"^\s*(\d+)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*(x?)\s*$", re.IGNORECASE)
_VALUE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*(x?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Intervention:
    """One change to one SAE feature. Parse the CLI form with `Intervention.parse("123=10x")`."""

    feature: int
    """Feature id i: the latent z_i, decoder direction W_dec[i] [d_in]."""
    kind: Kind = "clamp"
    """'clamp': set z_i to `value` keeping the SAE error term, x' = x + (c − z_i)·W_dec,i;
    'ablate': clamp to 0; 'add': x' = x + α·W_dec,i with α = `value`."""
    value: float = 0.0
    """c for a clamp, α for an add (0 for an ablation), in the units `relative` says."""
    relative: bool = False
    """True: `value` is a multiple of the feature's max activation over the store (``10x``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SaeKitError(f"unknown intervention {self.kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(self.feature, bool) or not isinstance(self.feature, int) or self.feature < 0:
            raise SaeKitError(f"a feature id is a non-negative integer (got {self.feature!r})")
        if not math.isfinite(self.value):
            raise SaeKitError(f"feature {self.feature}: the value must be a finite number (got {self.value})")
        if self.kind == "ablate" and (self.value != 0 or self.relative):
            raise SaeKitError(f"feature {self.feature}: an ablation takes no value (it clamps to 0)")

    @classmethod
    def parse(cls, text: str, kind: Kind = "clamp") -> "Intervention":
        """``"ID=VALUE"`` (``"123=10x"``, ``"7=-2.5"``) or, for an ablation, ``"ID"``."""
        if kind == "ablate":
            if not text.strip().isdigit():
                raise SaeKitError(f"--ablate takes a feature id, e.g. --ablate 456 (got {text!r})")
            return cls(int(text), "ablate")
        match = _SPEC.match(text)
        if not match:
            raise SaeKitError(
                f"cannot read {text!r}: write FEATURE=VALUE, e.g. 123=10x (10 × its max activation) "
                "or 123=4.5 (absolute)"
            )
        return cls(int(match.group(1)), kind, float(match.group(2)), bool(match.group(3)))

    def with_value(self, value: float, relative: bool | None = None) -> "Intervention":
        """The same intervention with another value (a sweep point)."""
        rel = self.relative if relative is None else relative
        return Intervention(self.feature, self.kind, float(value), rel)

    @property
    def label(self) -> str:
        """Short text for tables: ``clamp 123=10x``, ``add 7=+4``, ``ablate 456``."""
        if self.kind == "ablate":
            return f"ablate {self.feature}"
        sign = "+" if self.kind == "add" and self.value >= 0 else ""
        return f"{self.kind} {self.feature}={sign}{self.value:g}{'x' if self.relative else ''}"


def parse_values(text: str, relative: bool) -> list[tuple[float, bool]]:
    """A sweep list ``"-10,-5,0,5,10"`` -> [(value, relative)]; a bare number takes `relative`,
    a number ending in ``x`` is always a multiple of the max activation."""
    values = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        match = _VALUE.match(item)
        if not match:
            raise SaeKitError(f"cannot read sweep value {item!r}: give numbers separated by commas, e.g. -10,-5,0,5,10")
        values.append((float(match.group(1)), relative or bool(match.group(2))))
    if not values:
        raise SaeKitError("the sweep lists no values; give numbers separated by commas, e.g. -10,-5,0,5,10")
    return values


def check_feature(feature: int, d_sae: int) -> None:
    """Raise a SaeKitError naming the valid range when `feature` is not a latent of the SAE."""
    if not 0 <= feature < d_sae:
        raise SaeKitError(f"feature {feature} is out of range: the SAE has {d_sae} features (ids 0–{d_sae - 1})")


def absolute_value(intervention: Intervention, max_activation: torch.Tensor | None) -> float:
    """The intervention's value in activation units (relative values × the feature's max)."""
    if not intervention.relative:
        return intervention.value
    if max_activation is None:
        raise SaeKitError(
            f"{intervention.label}: a value ending in x is a multiple of the feature's max activation; "
            "pass the analysis (--analysis A, from `sae-kit analyze`) or give an absolute value"
        )
    peak = float(max_activation[intervention.feature])
    if not peak > 0:
        raise SaeKitError(
            f"{intervention.label}: feature {intervention.feature} never fired in the analysis (max activation "
            f"{peak:g}), so multiples of it mean nothing; give an absolute value instead"
        )
    return intervention.value * peak


class SteeringHook:
    """The function installed at the hook point: hidden [batch, seq, d_in] -> steered hidden
    (for a transcoder: (hidden [batch, seq, d_out], source [batch, seq, d_in]) -> steered hidden,
    z read from `source`, the MLP input; `attach` passes both).

    Low-level form (tensors); most callers use `SteeringHook.build` or `steer`.
    - clamp_features [k] (long) with clamp_values broadcastable to [..., k]: z_F is set to the
      values (per-position values, e.g. each feature's own current value, work for a single
      forward pass of matching shape);
    - add_vector [d_in]: added as it is (Σ α_j W_dec,j);
    - positions 'all' or 'generated' (positions ≥ prompt_len; prompt_len None means the length
      of the first forward pass after `reset`);
    - skip_bos: leave position 0 alone when it holds bos_token_id (default: the model's, set by
      `attach`).
    """

    def __init__(
        self,
        sae: nn.Module,
        *,
        clamp_features: torch.Tensor | None = None,
        clamp_values: torch.Tensor | None = None,
        add_vector: torch.Tensor | None = None,
        positions: Positions = "all",
        prompt_len: int | None = None,
        skip_bos: bool = True,
        bos_token_id: int | None = None,
        device: torch.device | str | None = None,
    ):
        if positions not in POSITIONS:
            raise SaeKitError(f"positions must be one of {', '.join(POSITIONS)} (got {positions!r})")
        self.sae = sae
        self.d_in = int(sae.W_dec.shape[1])
        """Width of the steered activation (the decoder's output, a transcoder's d_out)."""
        self.d_source = int(sae.W_enc.shape[0])
        """Width of the activation z is encoded from (the model's d_in)."""
        self.positions = positions
        self.prompt_len = prompt_len
        self.skip_bos = skip_bos
        self.bos_token_id = bos_token_id
        self.first_position = 0
        """1 while position 0 of the current sequence is a BOS token that is not steered, else 0."""
        device = torch.device(device) if device is not None else sae.W_dec.device
        dtype = sae.W_dec.dtype
        with torch.no_grad():
            if clamp_features is not None and len(clamp_features) > 0:
                features = torch.as_tensor(clamp_features, dtype=torch.long, device=sae.W_dec.device)
                self.features: torch.Tensor | None = features.to(device)
                self.clamp_values = torch.as_tensor(clamp_values, dtype=dtype).to(device)
                self.W_dec_F = sae.W_dec[features].detach().to(device)  # [k, d_in]
                self.encode_clamped = sae.subset_encoder(features)  # x [..., d_in] -> z_F [..., k]
            else:
                self.features = None
            self.add_vector = None if add_vector is None else add_vector.detach().to(device, dtype)
        self.offset: int | None = None
        """Cache length at the current forward pass (set by the model's pre-hook in `attach`)."""
        self.spans: list[tuple[int, int]] = []
        """[start, stop) ranges of absolute positions changed since `reset` (one per forward pass)."""

    @classmethod
    def build(
        cls,
        sae: nn.Module,
        interventions: Sequence[Intervention],
        max_activation: torch.Tensor | None = None,
        **kwargs,
    ) -> "SteeringHook":
        """From `Intervention`s: checks ids, resolves relative values, folds additions into one vector."""
        d_sae = int(sae.W_dec.shape[0])
        clamps: dict[int, float] = {}
        add = torch.zeros(int(sae.W_dec.shape[1]), dtype=sae.W_dec.dtype, device=sae.W_dec.device)
        n_add = 0
        for item in interventions:
            check_feature(item.feature, d_sae)
            value = absolute_value(item, max_activation)
            if item.kind == "add":
                add += value * sae.W_dec[item.feature].detach()
                n_add += 1
            elif item.feature in clamps:
                raise SaeKitError(f"feature {item.feature} is clamped twice; give one value per feature")
            else:
                clamps[item.feature] = value
        return cls(
            sae,
            clamp_features=torch.tensor(list(clamps), dtype=torch.long) if clamps else None,
            clamp_values=torch.tensor(list(clamps.values())) if clamps else None,
            add_vector=add if n_add else None,
            **kwargs,
        )

    @property
    def fast(self) -> bool:
        """Whether only the clamped latents are encoded (separable models), not all of them."""
        return bool(self.sae.separable)

    def reset(self, prompt_len: int | None = None) -> None:
        """Start a new generation (forget positions seen; set the prompt length if known)."""
        self.prompt_len = prompt_len
        self.offset = None
        self.first_position = 0
        self.spans = []

    @property
    def steered_positions(self) -> list[int]:
        """Absolute positions changed since `reset`, in order (each once with a KV cache)."""
        return [i for start, stop in self.spans for i in range(start, stop)]

    def begin_forward(self, offset: int, input_ids: torch.Tensor | None) -> None:
        """Called before each forward pass of the model (by `attach`): the absolute position of
        its first token (the cache length) and, at the start, whether position 0 is BOS."""
        self.offset = offset
        if offset == 0:
            self.first_position = int(
                self.skip_bos and self.bos_token_id is not None and input_ids is not None
                and input_ids.shape[-1] > 0 and bool((input_ids[..., 0] == self.bos_token_id).all())
            )

    def feature_values(self, x: torch.Tensor) -> torch.Tensor:
        """z_F [..., k] of the clamped features for activations x [..., d_in] (SAE dtype)."""
        return self.encode_clamped(x.to(self.sae.W_dec.device)).to(x.device)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """x' − x [..., d_out] for the encoded activation x [..., d_in]: Σ_{i clamped} (c_i − z_i(x))
        W_dec,i + add_vector (d_out = d_in but for transcoders, whose x is the MLP input)."""
        x = x.to(self.W_dec_F.dtype if self.features is not None else self.add_vector.dtype)
        shape = (*x.shape[:-1], self.d_in)
        out = x.new_zeros(shape) if self.add_vector is None else self.add_vector.expand(shape)
        if self.features is not None:
            shift = self.clamp_values - self.feature_values(x)  # [..., k]
            out = out + (shift.reshape(-1, shift.shape[-1]) @ self.W_dec_F).reshape(shape)
        return out

    def __call__(self, hidden: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [batch, seq, d_out] steered; z from `source` [batch, seq, d_in] (default: hidden)."""
        source = hidden if source is None else source
        if hidden.shape[-1] != self.d_in:
            raise SaeKitError(
                f"the SAE takes d_in={self.d_in} but the hooked module outputs d={hidden.shape[-1]}: "
                "wrong hook point (--hook) or wrong model (--model) for this run"
            )
        if source.shape[-1] != self.d_source:
            raise SaeKitError(f"the transcoder reads d_in={self.d_source} but its input hook has d={source.shape[-1]}: "
                              "wrong hook point (--hook) or wrong model (--model) for this run")
        if self.features is None and self.add_vector is None:
            return hidden
        offset = self.offset or 0
        seq = hidden.shape[1]
        if self.prompt_len is None:  # the first forward pass after reset() is the prompt
            self.prompt_len = offset + seq
        first = self.first_position if self.positions == "all" else max(self.first_position, self.prompt_len)
        start = max(0, min(seq, first - offset))
        if start >= seq:
            return hidden
        self.spans.append((offset + start, offset + seq))
        part = hidden[:, start:]
        steered = part + self.delta(source[:, start:]).to(hidden.dtype)
        return steered if start == 0 else torch.cat([hidden[:, :start], steered], dim=1)


def hook_module(model: nn.Module, sae: nn.Module, hook: str | None = None) -> str:
    """The hook point the SAE reads: `hook` if given, else the hook the SAE was trained on."""
    return hook_modules(model, sae, hook)[0]


def hook_modules(model: nn.Module, sae: nn.Module, hook: str | None = None) -> tuple[str, str]:
    """(read, write) hook points on `model`: where the SAE's input is encoded and where the
    steering changes the activation — the same point for an SAE; a transcoder's MLP input and
    MLP output (`RunInfo.splice_hooks`). `hook` overrides the input hook."""
    points = RunInfo.of(sae).splice_hooks(hook)
    resolved = []
    for name in points:
        found = resolve_hooks(model, [name])
        if len(found) != 1:
            raise SaeKitError(f"hook {name!r} matches {len(found)} modules; steering needs exactly one")
        resolved.append(found[0])
    return resolved[0], resolved[1]


def _cache_length(kwargs: dict) -> int:
    """Tokens already in the KV cache handed to the model's forward (0 without a cache)."""
    cache = kwargs.get("past_key_values")
    if cache is None:
        cache = kwargs.get("cache")  # transformers 5 `generate` passes it under this name
    length = getattr(cache, "get_seq_length", None)
    return int(length()) if callable(length) else 0


@contextmanager
def attach(model: nn.Module, module_name: str, steering: SteeringHook, *,
           read: str | None = None) -> Iterator[SteeringHook]:
    """Install `steering` at `module_name` (and a pre-hook on `model` that tells it the cache
    length, i.e. the absolute position of the first token of each forward pass, and the tokens).
    `read`: the hook point z is encoded from when it is another (a transcoder's MLP input)."""
    if steering.bos_token_id is None:
        steering.bos_token_id = getattr(model.config, "bos_token_id", None)

    def record_offset(_module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        steering.begin_forward(_cache_length(kwargs), input_ids if isinstance(input_ids, torch.Tensor) else None)

    handle = model.register_forward_pre_hook(record_offset, with_kwargs=True)
    try:
        with intervene(model, module_name, steering, read=read or module_name):
            yield steering
    finally:
        handle.remove()


@contextmanager
def steer(
    model: nn.Module,
    sae: nn.Module,
    interventions: Sequence[Intervention],
    *,
    max_activation: torch.Tensor | None = None,
    hook: str | None = None,
    positions: Positions = "all",
    prompt_len: int | None = None,
    skip_bos: bool = True,
) -> Iterator[SteeringHook]:
    """Steer `model` with `interventions` on `sae`'s features inside the ``with`` block.

    max_activation [d_sae]: each feature's max over the store (needed for relative values).
    hook: module name or alias; default the SAE's own (cfg.hook; a transcoder reads it and steers
    its target, the MLP output). positions: 'all' or
    'generated' (positions ≥ prompt_len; default prompt_len = the first forward pass's length).
    skip_bos: never steer a BOS token at position 0 (the SAE never saw one in training).
    Yields the `SteeringHook` (its `steered_positions` lists what was changed).
    """
    steering = SteeringHook.build(
        sae, interventions, max_activation, positions=positions, prompt_len=prompt_len, skip_bos=skip_bos,
        device=next(model.parameters()).device,
    )
    read, write = hook_modules(model, sae, hook)
    with attach(model, write, steering, read=read):
        yield steering
