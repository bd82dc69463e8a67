"""Steering experiments: baseline vs steered generations, and dose–response sweeps.

For every prompt the baseline is generated once; every condition (a set of interventions) is
generated under the same `GenerateOptions` (same seed). Besides the texts, each condition is
scored against the baseline on the baseline's own tokens (teacher forcing, so all conditions are
compared on the same positions):

- ``kl_next``: KL(p_base ‖ p_steered) of the next-token distribution right after the prompt;
- ``kl_continuation``: the same KL averaged over the end of the prompt and every position of
  the baseline continuation (with ``positions="generated"`` the first is 0 by construction, the
  second is the informative one);
- ``promoted_shift_next`` / ``promoted_shift_continuation``: the mean change
  log p_steered(t) − log p_base(t) over the primary feature's top promoted tokens t (its logit
  effects from the analysis), at the same positions.

KL is in nats: KL(p ‖ q) = Σ_v p_v (log p_v − log q_v).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sae_kit import __version__
from sae_kit.analysis.logit_effects import unembedding
from sae_kit.analysis.result import load_analysis
from sae_kit.autoencoders import RunInfo
from sae_kit.errors import SaeKitError
from sae_kit.lm.hooks import capture
from sae_kit.steering.generate import GenerateOptions, encode_prompt, generate
from sae_kit.steering.hook import Intervention, SteeringHook, attach, check_feature, hook_modules

N_PROMOTED = 10


# ----------------------------------------------------------------------------- feature facts


@dataclass(frozen=True)
class FeatureInfo:
    """What steering needs from the analysis of a run, for all features at once."""

    max_activation: torch.Tensor | None
    """[d_sae] each feature's max activation over the store (the unit of ``10x``); None if unknown."""
    promoted_ids: torch.Tensor | None
    """[d_sae, k] token ids each feature promotes most (logit effects); None: computed on demand."""
    source: str | None = None
    """The analysis directory these came from, if any."""


def load_feature_info(analysis, d_sae: int) -> FeatureInfo:
    """FeatureInfo from an analysis directory (`sae-kit analyze`), a loaded `FeatureAnalysis`
    (or anything with `max_activation`, `promoted_ids`), or None (absolute values only; promoted
    tokens then computed from the model)."""
    if analysis is None:
        return FeatureInfo(None, None)
    source = getattr(analysis, "source", None) or getattr(analysis, "path", None)
    source = None if source is None else str(source)
    if isinstance(analysis, (str, Path)):
        source = str(analysis)
        analysis = load_analysis(Path(analysis))
    max_activation = getattr(analysis, "max_activation", None)
    promoted = getattr(analysis, "promoted_ids", None)
    for name, tensor in (("max_activation", max_activation), ("promoted_ids", promoted)):
        if tensor is not None and tensor.shape[0] != d_sae:
            raise SaeKitError(
                f"the analysis {source or ''} has {name} for {tensor.shape[0]} features but the SAE has {d_sae}: "
                "it was made for another run"
            )
    return FeatureInfo(
        None if max_activation is None else max_activation.detach().float().cpu(),
        None if promoted is None else promoted.detach().long().cpu(),
        source,
    )


def promoted_tokens(model: nn.Module, sae: nn.Module, feature: int, info: FeatureInfo,
                    k: int = N_PROMOTED) -> list[int]:
    """The feature's top promoted token ids: from the analysis, else computed the same way
    (decoder direction through the final norm and the unembedding, `sae_kit.analysis.logit_effects`)."""
    if info.promoted_ids is not None:
        return [int(t) for t in info.promoted_ids[feature][:k]]
    direct = unembedding(model)
    if sae.W_dec.shape[1] != direct.W_U.shape[1]:
        return []  # not the residual width: no direct path to the logits
    row = sae.W_dec[feature : feature + 1].detach().to(direct.W_U.device, direct.W_U.dtype)
    return direct.direction_logits(row)[0].topk(k).indices.tolist()


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Condition:
    """One steered setting compared against the baseline."""

    label: str
    """Short name for tables and legends, e.g. ``clamp 123=10x``."""
    interventions: tuple[Intervention, ...]
    """What is changed (all at once)."""
    dose: float | None = None
    """The swept value in the units given (× max activation or absolute); None outside a sweep."""


@dataclass(frozen=True)
class Outcome:
    """One prompt under one condition, compared with the baseline."""

    text: str
    """The generated continuation (special tokens dropped)."""
    token_ids: tuple[int, ...]
    """The generated token ids."""
    kl_next: float
    """KL(base ‖ steered) of the next-token distribution after the prompt, nats."""
    kl_continuation: float
    """Mean KL over the prompt's last position and the baseline continuation, nats."""
    promoted_shift_next: float
    """Mean Δ log p of the primary feature's top promoted tokens after the prompt, nats."""
    promoted_shift_continuation: float
    """The same averaged over the positions of `kl_continuation`, nats."""


@dataclass(frozen=True)
class PromptResult:
    """The baseline and every condition's outcome for one prompt."""

    prompt: str
    """The prompt as given."""
    prompt_tokens: int
    """Its length in tokens (chat template included when used)."""
    baseline: str
    """The unsteered continuation."""
    baseline_ids: tuple[int, ...]
    """Its token ids."""
    feature_activation_prompt: float
    """Max activation of the primary feature over the prompt's tokens (unsteered; BOS excluded)."""
    feature_activation_continuation: float
    """Its max over the baseline continuation (0 when empty)."""
    outcomes: tuple[Outcome, ...]
    """One per condition, in the order of `SteeringResult.conditions`."""


@dataclass(frozen=True)
class SteeringResult:
    """A whole experiment: conditions × prompts, with everything needed to reproduce it."""

    conditions: tuple[Condition, ...]
    """The steered settings, in order (a sweep: by dose)."""
    prompts: tuple[PromptResult, ...]
    """One entry per prompt."""
    primary_feature: int
    """The feature the promoted-token shift and activations refer to (the swept one)."""
    promoted: tuple[tuple[int, str], ...]
    """Its top promoted tokens (id, text) used by the shift metric."""
    max_activation: float | None
    """The primary feature's max activation over the store (None without an analysis)."""
    dose_unit: str | None
    """'× max activation' or 'activation' for a sweep; None otherwise."""
    settings: dict = field(default_factory=dict)
    """Model, run, analysis, hook, generation options, versions, command: to reproduce it."""

    @property
    def is_sweep(self) -> bool:
        return all(c.dose is not None for c in self.conditions) and len(self.conditions) > 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SteeringResult":
        """Inverse of `to_dict` (what results.json holds)."""
        conditions = tuple(Condition(c["label"], tuple(Intervention(**i) for i in c["interventions"]), c["dose"])
                           for c in data["conditions"])
        prompts = tuple(
            PromptResult(**{**p, "baseline_ids": tuple(p["baseline_ids"]), "outcomes": tuple(
                Outcome(**{**o, "token_ids": tuple(o["token_ids"])}) for o in p["outcomes"])})
            for p in data["prompts"]
        )
        return cls(conditions, prompts, data["primary_feature"], tuple(tuple(t) for t in data["promoted"]),
                   data["max_activation"], data["dose_unit"], data.get("settings", {}))


def load_result(out_dir: str | Path) -> SteeringResult:
    """The `SteeringResult` saved in out_dir/results.json by `write_report`."""
    file = Path(out_dir) / "results.json"
    if not file.is_file():
        raise SaeKitError(f"{out_dir} holds no results.json; it is not a steering report directory")
    return SteeringResult.from_dict(json.loads(file.read_text()))


# ----------------------------------------------------------------------------- metrics


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) from log-probabilities [..., vocab] -> [...] (nats)."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0)


def promoted_shift(logp: torch.Tensor, logq: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Mean over `token_ids` of log q(t) − log p(t): [..., vocab] -> [...] (0 when no ids)."""
    if not token_ids:
        return torch.zeros(logp.shape[:-1])
    ids = torch.tensor(list(token_ids), device=logp.device)
    return (logq[..., ids] - logp[..., ids]).mean(-1)


def next_token_logprobs(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    """log p(next token) [seq − start, vocab] (float32) at positions start … seq − 1 of ids [1, seq]."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, start:]
    return torch.log_softmax(logits.float(), dim=-1)


# ----------------------------------------------------------------------------- experiments


def run_steering(
    loaded,
    sae: nn.Module,
    conditions: Sequence[Condition],
    prompts: Sequence[str],
    *,
    analysis=None,
    options: GenerateOptions = GenerateOptions(),
    hook: str | None = None,
    primary_feature: int | None = None,
    dose_unit: str | None = None,
    settings: dict | None = None,
    progress=None,
) -> SteeringResult:
    """Generate the baseline and each condition for each prompt; score them (module docstring).

    loaded: a `LoadedModel`; analysis: dir, loaded analysis or None (absolute values only).
    primary_feature defaults to the first condition's first intervention. `progress(str)` is
    called once per generation if given.
    """
    if not conditions:
        raise SaeKitError("nothing to steer: give at least one intervention (e.g. --feature 123=10x)")
    if not prompts:
        raise SaeKitError("no prompt given: pass --prompt TEXT or --prompt-file FILE")
    model, tokenizer = loaded.model, loaded.tokenizer
    d_sae = int(sae.W_dec.shape[0])
    info = load_feature_info(analysis, d_sae)
    primary = primary_feature if primary_feature is not None else conditions[0].interventions[0].feature
    check_feature(primary, d_sae)
    site = hook_modules(model, sae, hook)  # (read, write): one point, or a transcoder's MLP input and output
    device = next(model.parameters()).device
    hooks = [SteeringHook.build(sae, c.interventions, info.max_activation, positions=options.positions,
                                device=device) for c in conditions]  # checks every id and value first
    promoted = promoted_tokens(model, sae, primary, info)
    results = [steer_prompt(loaded, sae, site, prompt, conditions, hooks, options, primary, promoted, progress)
               for prompt in prompts]
    peak = None if info.max_activation is None else float(info.max_activation[primary])
    return SteeringResult(
        conditions=tuple(conditions), prompts=tuple(results), primary_feature=primary,
        promoted=tuple((t, tokenizer.decode([t])) for t in promoted), max_activation=peak, dose_unit=dose_unit,
        settings=describe_settings(loaded, sae, site, options, info, settings),
    )


def steer_prompt(loaded, sae: nn.Module, site: tuple[str, str], prompt: str, conditions: Sequence[Condition],
                 hooks: Sequence[SteeringHook], options: GenerateOptions, primary: int, promoted: list[int],
                 progress=None) -> PromptResult:
    """One prompt: its baseline, then every condition generated and scored on the baseline's tokens.
    site: (read, write) hook points (`hook_modules`)."""
    read, write = site
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt, options.chat, options.prepend_bos).to(device)
    p = ids.shape[1]
    base_seq = generate(model, ids, options)
    bos = getattr(model.config, "bos_token_id", None)
    first = int(bos is not None and int(ids[0, 0]) == bos)  # a BOS token: never steered, not counted
    with capture(model, [read], stop=False) as acts:
        base_logp = next_token_logprobs(model, base_seq, p - 1)
    with torch.no_grad():
        z = sae.encode(acts[read][0].to(sae.W_dec.device, sae.W_dec.dtype))[:, primary]
    outcomes = []
    for condition, steering in zip(conditions, hooks):
        if progress:
            progress(f"{condition.label} | {prompt[:40]}")
        with attach(model, write, steering, read=read):
            seq = generate(model, ids, options, steering)
            steering.reset(prompt_len=p)
            logq = next_token_logprobs(model, base_seq, p - 1)
        kl = kl_divergence(base_logp, logq)
        shift = promoted_shift(base_logp, logq, promoted)
        new = seq[0, p:].tolist()
        outcomes.append(Outcome(
            text=tokenizer.decode(new, skip_special_tokens=True), token_ids=tuple(new),
            kl_next=float(kl[0]), kl_continuation=float(kl.mean()),
            promoted_shift_next=float(shift[0]), promoted_shift_continuation=float(shift.mean()),
        ))
    base_new = base_seq[0, p:].tolist()
    return PromptResult(
        prompt=prompt, prompt_tokens=p, baseline=tokenizer.decode(base_new, skip_special_tokens=True),
        baseline_ids=tuple(base_new), feature_activation_prompt=float(z[first:p].max()) if p > first else 0.0,
        feature_activation_continuation=float(z[p:].max()) if z.shape[0] > p else 0.0,
        outcomes=tuple(outcomes),
    )


def compare(loaded, sae: nn.Module, interventions: Sequence[Intervention], prompts: Sequence[str],
            **kwargs) -> SteeringResult:
    """Baseline vs one steered condition (all `interventions` at once), side by side."""
    condition = Condition(", ".join(i.label for i in interventions), tuple(interventions))
    return run_steering(loaded, sae, [condition], prompts, **kwargs)


def sweep_conditions(swept: Intervention, values: Sequence[float | tuple[float, bool]],
                     fixed: Sequence[Intervention] = ()) -> list[Condition]:
    """One condition per value of `swept` (others in `fixed` held constant), sorted by value.

    A value is a number in `swept`'s units or a (value, relative) pair from `parse_values`."""
    if swept.kind == "ablate":
        raise SaeKitError("a sweep varies a clamp or an add; an ablation has no value to vary")
    pairs = sorted({v if isinstance(v, tuple) else (float(v), swept.relative) for v in values})
    conditions = []
    for value, relative in pairs:
        point = swept.with_value(value, relative)
        items = (point, *fixed)
        conditions.append(Condition(", ".join(i.label for i in items), items, dose=value))
    return conditions


def steering_sweep(
    loaded,
    sae: nn.Module,
    analysis,
    feature: int | Intervention,
    values: Sequence[float],
    prompts: Sequence[str],
    *,
    kind: str = "clamp",
    relative: bool = True,
    fixed: Sequence[Intervention] = (),
    **kwargs,
) -> SteeringResult:
    """Dose–response: clamp (or add) `feature` at each of `values` (multiples of its max
    activation when `relative`, else absolute), other interventions `fixed`, on every prompt.

    Example: ``steering_sweep(loaded, sae, "analysis/", 123, [-10, -5, 0, 5, 10], ["The sea"])``.
    """
    swept = feature if isinstance(feature, Intervention) else Intervention(int(feature), kind, 1.0, relative)
    if len({(v if isinstance(v, tuple) else (v, swept.relative))[1] for v in values}) > 1:
        raise SaeKitError("a sweep mixes absolute and relative (x) values; use one unit for all values")
    first = values[0] if values else (0.0, swept.relative)
    unit_relative = first[1] if isinstance(first, tuple) else swept.relative
    return run_steering(loaded, sae, sweep_conditions(swept, values, fixed), prompts, analysis=analysis,
                        primary_feature=swept.feature,
                        dose_unit="× max activation" if unit_relative else "activation", **kwargs)


def describe_settings(loaded, sae: nn.Module, site: tuple[str, str], options: GenerateOptions, info: FeatureInfo,
                      extra: dict | None) -> dict:
    """Everything needed to reproduce an experiment (the report prints it)."""
    cfg = sae.cfg
    read, write = site
    steered = {"steered_module": write} if write != read else {}  # a transcoder steers its target
    return {
        "model": loaded.spec, "model_name": loaded.name, "hook": cfg.hook, "hook_module": read, **steered,
        "sae": {"arch": cfg.arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "store": RunInfo.of(sae).store},
        "analysis": info.source, "generation": dataclasses.asdict(options),
        "device": str(next(loaded.model.parameters()).device), "dtype": str(loaded.dtype).removeprefix("torch."),
        "versions": {"sae_kit": __version__, "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
                     "python": platform.python_version()},
        **(extra or {}),
    }
