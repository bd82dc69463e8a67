"""EleutherAI sparsify's on-disk format, imported (e.g. `EleutherAI/sae-llama-3-8b-32x`, downloaded
by the user).

sparsify (github.com/EleutherAI/sparsify, `SparseCoder.save_to_disk` / `load_from_disk`) writes one
directory per hook point, named after the module (`layers.10`, `layers.3.mlp`, `embed_tokens`):

    HOOKPOINT/cfg.json          SparseCoderConfig + d_in: activation ("topk" | "groupmax"), k,
                                expansion_factor, num_latents (0: expansion_factor · d_in),
                                normalize_decoder, multi_topk, skip_connection, transcode
    HOOKPOINT/sae.safetensors   encoder.weight [d_sae, d_in], encoder.bias [d_sae],
                                W_dec [d_sae, d_in], b_dec [d_in] (+ W_skip [d_in, d_in])

Its TopK SAE computes z = TopK_k(ReLU((x − b_dec) encoder.weightᵀ + encoder.bias)) and
x̂ = z W_dec + b_dec (the decoder bias is subtracted from the input unless `transcode`), which is
our 'topk' with W_enc = encoder.weightᵀ. Like the SAELens reader, this module never tests an
architecture's name: the first registered class whose `from_sparsify_config(raw)` reads the
cfg.json is built and filled by `load_sparsify_tensors(state, raw)`; transcoders (transcode,
skip_connection) are one more such class.

Hook points map onto our aliases: layers.L -> resid.L (a decoder block's output), layers.L.mlp ->
mlp.L, layers.L.self_attn / attn -> attn.L; others keep their module name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.autoencoders.base import Autoencoder
from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.imported import write_imported_run
from sae_kit.autoencoders.registry import ARCHITECTURES, build_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"

_HOOKPOINT = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?$")
_ALIAS_OF = {None: "resid", "mlp": "mlp", "self_attn": "attn", "attn": "attn"}


def alias_of_hookpoint(hookpoint: str) -> str:
    """sparsify's hook point name -> our alias where one exists (layers.10 -> resid.10)."""
    match = _HOOKPOINT.match(hookpoint)
    return f"{_ALIAS_OF[match.group(2)]}.{match.group(1)}" if match else hookpoint


def sparsify_hookpoints(path: str | Path) -> list[str]:
    """The hook point directories (those holding a cfg.json) of a sparsify checkpoint directory."""
    path = Path(path)
    return sorted(p.name for p in path.iterdir() if p.is_dir() and (p / SPARSIFY_CFG).is_file()) if path.is_dir() else []


def resolve_hookpoint_dir(path: str | Path, hookpoint: str | None) -> Path:
    """The directory of one hook point: `path` itself when it holds a cfg.json, else path/hookpoint."""
    path = Path(path)
    if hookpoint:
        path = path / hookpoint
    if (path / SPARSIFY_CFG).is_file():
        return path
    available = sparsify_hookpoints(path)
    if available:
        raise SaeKitError(f"{path} holds sparse coders for several hook points; pick one with --hookpoint: "
                          + ", ".join(available))
    raise SaeKitError(f"{path} is not a sparsify directory (no {SPARSIFY_CFG})")


def import_sparsify(path: str | Path, hookpoint: str | None = None,
                    device: str | torch.device | None = None) -> Autoencoder:
    """Load one sparsify sparse coder (a hook point directory, or `hookpoint` inside a checkpoint
    directory) as our model, in eval mode."""
    path = resolve_hookpoint_dir(path, hookpoint)
    try:
        raw = json.loads((path / SPARSIFY_CFG).read_text())
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{path / SPARSIFY_CFG} is not valid JSON ({err})") from err
    match = next(((cls, fields) for cls in ARCHITECTURES.values()
                  if (fields := cls.from_sparsify_config(raw)) is not None), None)
    if match is None:
        readable = [cls.arch for cls in ARCHITECTURES.values() if "from_sparsify_config" in vars(cls)]
        described = ", ".join(f"{k}={raw.get(k)!r}" for k in ("activation", "transcode", "skip_connection") if k in raw)
        raise SaeKitError(f"sparsify coder ({described}) is not supported; sae-kit reads {', '.join(readable)}")
    cls, fields = match
    weights = path / SPARSIFY_WEIGHTS
    if not weights.is_file():
        raise SaeKitError(f"{path} has no {SPARSIFY_WEIGHTS}")
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    if "encoder.weight" not in state:
        raise SaeKitError(f"{weights} lacks encoder.weight")
    d_sae, d_in = state["encoder.weight"].shape
    expected = raw.get("num_latents") or raw.get("expansion_factor", 0) * raw.get("d_in", d_in)
    if raw.get("d_in", d_in) != d_in or expected != d_sae:
        raise SaeKitError(f"{path}: cfg.json says d_in={raw.get('d_in')}, {expected} latents; "
                          f"encoder.weight is [{d_sae}, {d_in}]")
    cfg = AutoencoderConfig(arch=cls.arch, d_in=d_in, d_sae=d_sae, **{"decoder_norm": "free", **fields},
                            hook=alias_of_hookpoint(path.name),
                            metadata={"source": "sparsify", "path": str(path.resolve()), "sparsify_cfg": raw})
    model = build_autoencoder(cfg)
    try:
        model.load_sparsify_tensors(state, raw)
    except (SaeKitError, RuntimeError) as err:
        raise SaeKitError(f"{weights}: {err}") from None
    return model.to(device or "cpu").eval()


@dataclass(frozen=True)
class SparsifyImportConfig(JsonConfig):
    """`sae-kit import sparsify`: one sparsify sparse coder written as an sae-kit run directory."""

    config_name = "sparsify import config"

    path: str
    """A sparsify hook point directory (cfg.json + sae.safetensors), or a checkpoint directory of several."""
    out: str
    """The run directory to write (weights.safetensors + config.json)."""
    hookpoint: str | None = None
    """The hook point inside a checkpoint directory of several (e.g. layers.10)."""
    overwrite: bool = False
    """Replace a run already in --out."""


def import_sparsify_run(cfg: SparsifyImportConfig) -> Path:
    """Import one sparsify coder as the run directory `cfg.out`; returns cfg.out."""
    model = import_sparsify(cfg.path, cfg.hookpoint)
    source = resolve_hookpoint_dir(cfg.path, cfg.hookpoint)
    return write_imported_run(model, cfg.out, cfg.overwrite, "sparsify", source)
