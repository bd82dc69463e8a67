"""SAELens on-disk format: export our SAEs so SAELens / Neuronpedia tooling opens them, and
import SAELens SAEs (e.g. `gpt2-small-res-jb`, Gemma Scope's JumpReLU SAEs saved by SAELens,
downloaded by the user) to analyse them here.

A SAELens SAE directory holds `cfg.json` and `sae_weights.safetensors` with W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] — the same names and shapes as ours — plus the
architecture's own tensors (jumprelu: `threshold` [d_sae]; gated: `b_gate`, `b_mag`, `r_mag` and
no b_enc). Field names follow SAELens (sae_lens/saes/sae.py `SAEConfig` / `SAEMetadata`, the
per-architecture configs in sae_lens/saes/*.py, and loading/pretrained_sae_loaders.py
`handle_pre_6_0_config`): we write the flat layout that every SAELens version reads (6.x converts
it on load, since the file names no sae_lens_version):

    architecture, d_in, d_sae, dtype, device, apply_b_dec_to_input,
    normalize_activations ("none": our input scale is folded in), reshape_activations,
    activation_fn, activation_fn_kwargs, finetuning_scaling_factor, model_name, hook_name,
    hook_layer, hook_head_index, prepend_bos, context_size, dataset_path,
    model_from_pretrained_kwargs, neuronpedia_id, sae_lens_training_version,
    + the architecture's fields (`saelens_fields()`: k, l0_coefficient, matryoshka_widths, …)

This module never tests an architecture's name: each class says what it exports
(`saelens_architecture`, `saelens_fields()`, `saelens_tensors()`) and what it reads
(`from_saelens_config(raw)`, `load_saelens_tensors(state, raw)`); SAELens-wide options are folded
here through the model's own geometry (`absorb_input_offset_`, `fold_input_scale_`).
Like SAELens, a trained BatchTopK or Matryoshka SAE is exported as a JumpReLU SAE whose threshold
is the estimated θ for every latent (so it imports back as 'jumprelu' and encodes identically).

Hook names are translated between our aliases and TransformerLens names:
resid.L <-> blocks.L.hook_resid_post, mlp.L <-> blocks.L.hook_mlp_out,
attn.L <-> blocks.L.hook_attn_out (blocks.L.hook_resid_pre = resid.(L−1)),
mlp_in.L <-> blocks.L.ln2.hook_normalized (the MLP's input after its norm; SAELens' transcoder
releases also name it blocks.L.mlp.hook_in).
Assumption, documented: SAELens' ReLU "standard" SAE computes the same function as our 'sae',
'ae' and 'dae' models; its "topk" applies ReLU to the top-k pre-activations, as ours does.

What differs between architectures comes from the class, never from its name: its SAELens
fields (`saelens_fields`: activation, k, d_out …), its tensors (`saelens_tensors` /
`load_saelens_tensors`: a skip transcoder's W_skip), whether its encoder subtracts b_dec
(`apply_b_dec_to_input`, False for transcoders), and a transcoder's target hook, written as
SAELens' `hook_name_out`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.artifacts import atomic_save_tensors, atomic_write_json
from sae_kit.autoencoders.base import Autoencoder
from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.imported import write_imported_run
from sae_kit.autoencoders.registry import ARCHITECTURES, build_autoencoder
from sae_kit.autoencoders.runs import RunInfo, load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"

_ALIAS = re.compile(r"^(resid|mlp_in|mlp|attn)\.(\d+)$")
_LAYER_MODULE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)$")
_MLP_MODULE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.mlp(:input)?$")
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre|hook_mlp_out|hook_attn_out|ln2\.hook_normalized"
                      r"|mlp\.hook_in)$")
_TL_OF_ALIAS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out",
                "mlp_in": "ln2.hook_normalized"}
_ALIAS_OF_TL = {"hook_resid_post": "resid", "hook_mlp_out": "mlp", "hook_attn_out": "attn",
                "ln2.hook_normalized": "mlp_in", "mlp.hook_in": "mlp_in"}


def to_transformerlens_hook(hook: str | None) -> tuple[str | None, int | None]:
    """Our hook (alias or module name) -> (TransformerLens hook name, layer), when there is one."""
    if not hook:
        return None, None
    alias = _ALIAS.match(hook)
    if alias:
        layer = int(alias.group(2))
        return f"blocks.{layer}.{_TL_OF_ALIAS[alias.group(1)]}", layer
    block = _LAYER_MODULE.search(hook)
    if block:  # a decoder block's module name: its output is the residual stream after it
        layer = int(block.group(1))
        return f"blocks.{layer}.hook_resid_post", layer
    mlp = _MLP_MODULE.search(hook)
    if mlp:  # an MLP module's output, or its input (MODULE:input)
        layer = int(mlp.group(1))
        return f"blocks.{layer}.{_TL_OF_ALIAS['mlp_in' if mlp.group(2) else 'mlp']}", layer
    return hook, None


def from_transformerlens_hook(hook_name: str | None) -> str | None:
    """TransformerLens hook name -> our alias (resid.L, mlp.L, attn.L, mlp_in.L) where one exists."""
    if not hook_name:
        return None
    match = _TL_HOOK.match(hook_name)
    if not match:
        return hook_name
    layer, kind = int(match.group(1)), match.group(2)
    if kind == "hook_resid_pre":
        return f"resid.{layer - 1}" if layer > 0 else hook_name
    return f"{_ALIAS_OF_TL[kind]}.{layer}"


def export_saelens(model: Autoencoder | str | Path, out_dir: str | Path, *, model_name: str | None = None,
                   hook_name: str | None = None, context_size: int | None = None,
                   dataset_path: str | None = None) -> Path:
    """Write `model` (or the run dir it names) as a SAELens SAE directory; returns out_dir.

    model_name / hook_name / context_size / dataset_path override what the model's metadata
    records (SAELens expects TransformerLens names, e.g. 'gpt2-small', 'blocks.8.hook_resid_post').
    """
    if not isinstance(model, Autoencoder):
        model = load_autoencoder(model)
    cfg = model.cfg
    architecture = model.saelens_architecture
    if architecture is None:
        exportable = [name for name, cls in ARCHITECTURES.items() if cls.saelens_architecture]
        raise SaeKitError(f"SAELens has no architecture for {cfg.arch!r} models; exportable: {', '.join(exportable)}")
    meta = cfg.metadata or {}
    info = RunInfo.of(model)
    tl_hook, layer = to_transformerlens_hook(cfg.hook or info.hook_module)
    target = {"hook_name_out": to_transformerlens_hook(info.target_point)[0]} if info.target_point else {}
    saelens_cfg = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": model.apply_b_dec_to_input,
        "normalize_activations": "none",  # the E‖x‖ = √d scale is folded into the weights
        "reshape_activations": "none",
        **model.saelens_fields(),
        "finetuning_scaling_factor": False,
        "model_name": model_name or info.model_name or info.model or "unknown",
        "hook_name": hook_name or tl_hook or "unknown",
        **target,
        "hook_layer": layer if layer is not None else -1,
        "hook_head_index": None,
        "prepend_bos": info.prepend_bos,
        "context_size": context_size or info.context_len,
        "dataset_path": dataset_path or "",
        "model_from_pretrained_kwargs": {},
        "neuronpedia_id": None,
        "sae_lens_training_version": None,
        "sae_kit": {"arch": cfg.arch, "hook": cfg.hook, "target_hook": cfg.target_hook, "metadata": meta},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model.saelens_tensors().items()}
    atomic_save_tensors(out_dir / SAELENS_WEIGHTS, tensors)
    atomic_write_json(out_dir / SAELENS_CFG, saelens_cfg)
    return out_dir


def saelens_metadata(raw: dict) -> dict:
    """A cfg.json's fields, the 6.x "metadata" block flattened under the top-level ones."""
    return {**raw.get("metadata", {}), **{k: v for k, v in raw.items() if k != "metadata"}}


def saelens_hooks(raw: dict) -> tuple[str | None, str | None]:
    """(hook, target hook) as our aliases, from a cfg.json's hook_name (hook_point) and hook_name_out."""
    meta = saelens_metadata(raw)
    return (from_transformerlens_hook(meta.get("hook_name") or meta.get("hook_point")),
            from_transformerlens_hook(meta.get("hook_name_out")))


def import_saelens(path: str | Path, device: str | torch.device | None = None,
                   norm_scaling_factor: float | None = None) -> Autoencoder:
    """Load a SAELens SAE directory (cfg.json + sae_weights.safetensors) as our model, taking raw
    activations. The first registered class whose `from_saelens_config` reads the cfg.json builds
    it and `load_saelens_tensors` fills it. Folded exactly: an apply_b_dec_to_input other than the
    class' (`absorb_input_offset_`: b_enc ← b_enc + (a_ours − a_theirs) b_dec W_enc), a finetuning
    scaling factor s (W_dec ← diag(s) W_dec), and normalize_activations = 'expected_average_only_in'
    when `norm_scaling_factor` is given (SAELens keeps that factor outside the files)."""
    path = Path(path)
    try:
        raw = json.loads((path / SAELENS_CFG).read_text())
    except FileNotFoundError:
        raise SaeKitError(f"{path} is not a SAELens SAE directory (no {SAELENS_CFG})") from None
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{path / SAELENS_CFG} is not valid JSON ({err})") from err
    architecture = raw.get("architecture", "standard")
    activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    match = next(((cls, fields) for cls in ARCHITECTURES.values()
                  if (fields := cls.from_saelens_config(raw)) is not None), None)
    if match is None:
        readable = [f"{cls.saelens_architecture!r} (as {cls.arch})" for cls in ARCHITECTURES.values()
                    if "from_saelens_config" in vars(cls)]
        raise SaeKitError(f"SAELens architecture {architecture!r} (activation {activation!r}) is not supported; "
                          f"sae-kit imports {', '.join(readable)}")
    cls, arch_fields = match
    normalize = raw.get("normalize_activations") or "none"
    if normalize not in ("none", False) and not (normalize == "expected_average_only_in" and norm_scaling_factor):
        raise SaeKitError(f"{path}: normalize_activations={normalize!r} cannot be folded into the weights"
                          + ("; pass norm_scaling_factor (sae-kit import saelens --norm-scaling-factor)"
                             if normalize == "expected_average_only_in" else ""))
    weights_file = path / SAELENS_WEIGHTS
    if not weights_file.is_file():
        raise SaeKitError(f"{path} has no {SAELENS_WEIGHTS}")
    state = {k_: v.float() for k_, v in load_file(str(weights_file)).items()}
    if "W_enc" not in state:
        raise SaeKitError(f"{weights_file} lacks W_enc")
    d_in, d_sae = state["W_enc"].shape
    hook, target_hook = saelens_hooks(raw)
    d_out = state["W_dec"].shape[1] if "W_dec" in state else d_in
    cfg = AutoencoderConfig(arch=cls.arch, d_in=d_in, d_sae=d_sae, d_out=d_out,
                            **{"decoder_norm": "free", **arch_fields}, hook=hook, target_hook=target_hook,
                            metadata={"source": "saelens", "path": str(path.resolve()), "saelens_cfg": raw})
    model = build_autoencoder(cfg)
    try:
        model.load_saelens_tensors(state, raw)
    except SaeKitError as err:
        raise SaeKitError(f"{weights_file}: {err}") from None
    except RuntimeError as err:  # copy_ of a wrongly shaped tensor
        raise SaeKitError(f"{weights_file}: a tensor has the wrong shape for d_in={d_in}, d_sae={d_sae} ({err})") from None
    with torch.no_grad():
        # their pre = (x − a b_dec) W_enc + b_enc with a = apply_b_dec_to_input; ours the same with our a
        theirs, ours = bool(raw.get("apply_b_dec_to_input", True)), bool(model.apply_b_dec_to_input)
        if theirs != ours:
            if model.b_dec.shape[0] != d_in:
                raise SaeKitError(f"{path}: apply_b_dec_to_input={theirs} with d_out ≠ d_in cannot be folded")
            model.absorb_input_offset_((int(ours) - int(theirs)) * model.b_dec.detach().clone())
        scaling = state.get("finetuning_scaling_factor", state.get("scaling_factor"))
        if scaling is not None:
            model.W_dec.mul_(scaling[:, None])
        if normalize == "expected_average_only_in":
            model.fold_input_scale_(norm_scaling_factor)
    return model.to(device or "cpu").eval()


# ----------------------------------------------------------------------------- run directories (the CLI's library side)


@dataclass(frozen=True)
class SaelensExportConfig(JsonConfig):
    """`sae-kit export saelens`: a trained run written as a SAELens SAE directory."""

    config_name = "SAELens export config"

    run: str
    """The run directory to export (one model, not a sweep root)."""
    out: str
    """The SAELens directory to write (cfg.json + sae_weights.safetensors)."""
    model_name: str | None = None
    """SAELens' model_name (a TransformerLens name such as gpt2-small); None: what the run records."""
    hook_name: str | None = None
    """SAELens' hook_name (e.g. blocks.8.hook_resid_post); None: translated from the run's hook."""
    context_size: int | None = None
    """SAELens' context_size; None: the store's context length."""
    dataset_path: str | None = None
    """SAELens' dataset_path; None: empty."""


@dataclass(frozen=True)
class SaelensImportConfig(JsonConfig):
    """`sae-kit import saelens`: a SAELens SAE directory written as an sae-kit run directory."""

    config_name = "SAELens import config"

    path: str
    """The SAELens SAE directory (cfg.json + sae_weights.safetensors), e.g. downloaded from the hub."""
    out: str
    """The run directory to write (weights.safetensors + config.json)."""
    norm_scaling_factor: float | None = None
    """SAELens' activation scale for normalize_activations='expected_average_only_in' (kept outside its files)."""
    overwrite: bool = False
    """Replace a run already in --out."""


def export_saelens_run(cfg: SaelensExportConfig) -> Path:
    """Export the run `cfg.run` as SAELens files in `cfg.out`; returns cfg.out."""
    return export_saelens(cfg.run, cfg.out, model_name=cfg.model_name, hook_name=cfg.hook_name,
                          context_size=cfg.context_size, dataset_path=cfg.dataset_path)


def import_saelens_run(cfg: SaelensImportConfig) -> Path:
    """Import the SAELens directory `cfg.path` as the run directory `cfg.out`; returns cfg.out."""
    model = import_saelens(cfg.path, norm_scaling_factor=cfg.norm_scaling_factor)
    return write_imported_run(model, cfg.out, cfg.overwrite, "saelens", Path(cfg.path))
