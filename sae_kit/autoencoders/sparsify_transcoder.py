"""sparsify's transcoders: import EleutherAI sparsify `SparseCoder` directories trained with
``transcode: true`` (e.g. the skip transcoders of Paulo, Shabalin & Belrose 2025) as our
'transcoder' / 'skip-transcoder' models with the TopK activation.

A sparsify directory (sparsify/sparse_coder.py `save_to_disk`) holds `cfg.json` (the
`SparseCoderConfig` fields activation, k, num_latents, skip_connection, transcode … plus d_in)
and `sae.safetensors` with encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec
[d_sae, d_out], b_dec [d_out] and, with a skip connection, W_skip [d_out, d_in] (sparsify adds
x W_skipᵀ). A transcoder encodes x without subtracting b_dec: ReLU(x W_encᵀ + b), top k kept,
as ours. sparsify's TopK SAEs (transcode false) are not read here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.transcoder import SkipTranscoder, Transcoder
from sae_kit.errors import SaeKitError

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
_SPARSIFY_MLP = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.mlp$")


def transcoder_hooks(path: Path) -> tuple[str | None, str | None]:
    """(hook, target) of a transcoder directory named after an MLP module: layers.6.mlp -> (mlp_in.6, mlp.6)."""
    layer = _SPARSIFY_MLP.search(path.name)
    return (f"mlp_in.{layer.group(1)}", f"mlp.{layer.group(1)}") if layer else (None, None)


def import_sparsify_transcoder(path: str | Path, *, hook: str | None = None, target_hook: str | None = None,
                               device: str | torch.device | None = None) -> Transcoder:
    """Load an EleutherAI sparsify transcoder directory (`cfg.json` with ``"transcode": true`` +
    `sae.safetensors`, as `SparseCoder.save_to_disk` writes it) as our 'transcoder' or, with
    ``"skip_connection": true``, 'skip-transcoder' (TopK activation, sparsify's only one we read).

    sparsify stores encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_out], b_dec and
    W_skip [d_out, d_in] (ŷ += x W_skipᵀ); it encodes ReLU(x W_encᵀ + b) and keeps the top k, as
    we do. Hook points: a directory named after an MLP module (``layers.6.mlp``) becomes
    hook mlp_in.6 and target mlp.6; `hook` / `target_hook` override that.
    """
    path = Path(path)
    try:
        raw = json.loads((path / SPARSIFY_CFG).read_text())
    except FileNotFoundError:
        raise SaeKitError(f"{path} is not a sparsify directory (no {SPARSIFY_CFG})") from None
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{path / SPARSIFY_CFG} is not valid JSON ({err})") from err
    if not raw.get("transcode"):
        raise SaeKitError(f"{path} holds a sparsify SAE, not a transcoder (cfg.json has no \"transcode\": true)")
    if raw.get("activation", "topk") != "topk":
        raise SaeKitError(f"{path}: sparsify activation {raw.get('activation')!r} is not supported (only topk)")
    if not (path / SPARSIFY_WEIGHTS).is_file():
        raise SaeKitError(f"{path} has no {SPARSIFY_WEIGHTS}")
    state = {name: tensor.float() for name, tensor in load_file(str(path / SPARSIFY_WEIGHTS)).items()}
    missing = [n for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if n not in state]
    skip = bool(raw.get("skip_connection"))
    if skip and "W_skip" not in state:
        missing.append("W_skip")
    if missing:
        raise SaeKitError(f"{path / SPARSIFY_WEIGHTS} lacks {', '.join(missing)}")
    default_hook, default_target = transcoder_hooks(path)
    d_sae, d_in = state["encoder.weight"].shape
    cls = SkipTranscoder if skip else Transcoder
    cfg = AutoencoderConfig(arch=cls.arch, d_in=d_in, d_sae=d_sae, d_out=state["W_dec"].shape[1],
                            transcoder_activation="topk", k=int(raw["k"]), decoder_norm="free",
                            hook=hook or default_hook, target_hook=target_hook or default_target,
                            metadata={"source": "sparsify", "path": str(path.resolve()), "sparsify_cfg": raw})
    model = cls(cfg)
    with torch.no_grad():
        model.W_enc.copy_(state["encoder.weight"].T)
        model.b_enc.copy_(state["encoder.bias"])
        model.W_dec.copy_(state["W_dec"])
        model.b_dec.copy_(state["b_dec"])
        if skip:
            model.W_skip.copy_(state["W_skip"].T)
    return model.to(device or "cpu").eval()
