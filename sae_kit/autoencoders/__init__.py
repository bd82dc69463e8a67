"""The autoencoder core: one interface, five models, one on-disk format.

Every model is an `nn.Module` with `cfg` (`AutoencoderConfig`), `d_in`, `d_sae`, tensors
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]` (SAELens shapes)
and the methods

    encode(x [..., d_in]) -> z [..., d_sae]        deterministic (the VAE returns μ)
    decode(z [..., d_sae]) -> x_hat [..., d_in]
    forward(x [batch, d_in]) -> ForwardOutput(x_hat, z, losses, loss)
    save(run_dir)                                 weights.safetensors + config.json

`load_autoencoder(run_dir)` loads any of them. Saved models take raw activations: the
trainer's input scale (E‖x‖ = √d_in) is folded into the weights before saving.

This package imports no trainer, store or CLI code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.autoencoders.base import CONFIG_FILE, FORMAT, WEIGHTS_FILE, Autoencoder
from sae_kit.autoencoders.baselines import PCA, CovarianceAccumulator, DenseAutoencoder, VariationalAutoencoder
from sae_kit.autoencoders.config import ARCH_DESCRIPTIONS, ARCHS, AutoencoderConfig, ForwardOutput
from sae_kit.autoencoders.sparse import SparseAutoencoder
from sae_kit.errors import SaeKitError

__all__ = [
    "ARCHS",
    "ARCH_DESCRIPTIONS",
    "Autoencoder",
    "AutoencoderConfig",
    "CovarianceAccumulator",
    "DenseAutoencoder",
    "ForwardOutput",
    "PCA",
    "SparseAutoencoder",
    "VariationalAutoencoder",
    "build_autoencoder",
    "load_autoencoder",
    "read_run_config",
    "SWEEP_FILE",
]

SWEEP_FILE = "sweep.json"

MODEL_CLASSES: dict[str, type[Autoencoder]] = {
    "sae": SparseAutoencoder,
    "topk": SparseAutoencoder,
    "ae": DenseAutoencoder,
    "dae": DenseAutoencoder,
    "vae": VariationalAutoencoder,
    "pca": PCA,
}


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """A freshly initialised model for `cfg` (its class is chosen by cfg.arch)."""
    return MODEL_CLASSES[cfg.arch](cfg)


def read_run_config(run_dir: str | Path) -> dict:
    """The parsed config.json of a run dir; a clear error for a sweep root or a non-run."""
    run_dir = Path(run_dir)
    file = run_dir / CONFIG_FILE
    if not file.is_file():
        sweep = run_dir / SWEEP_FILE
        if sweep.is_file():
            runs = [r["path"] for r in json.loads(sweep.read_text()).get("runs", [])]
            listed = ", ".join(str(run_dir / r) for r in runs)
            raise SaeKitError(f"{run_dir} is a sweep of {len(runs)} runs, not one model; pass one of: {listed}")
        raise SaeKitError(f"{run_dir} is not an autoencoder run directory (no {CONFIG_FILE}); train one with `sae-kit train`")
    try:
        payload = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{file} is not valid JSON ({err})") from err
    if payload.get("format") != FORMAT or "autoencoder" not in payload:
        raise SaeKitError(f"{file} is not an sae-kit autoencoder config (for SAELens folders use sae_kit.interop)")
    return payload


def load_autoencoder(run_dir: str | Path, device: str | torch.device | None = None) -> Autoencoder:
    """Load any of the five models from a run dir (weights.safetensors + config.json), in eval mode.

    Raises SaeKitError naming the problem (not a run dir, a sweep root, missing or mismatched
    weights).
    """
    run_dir = Path(run_dir)
    cfg = AutoencoderConfig.from_dict(read_run_config(run_dir)["autoencoder"])
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise SaeKitError(f"{run_dir} has a config but no {WEIGHTS_FILE}; the run did not finish saving")
    model = build_autoencoder(cfg)
    state = load_file(str(weights))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise SaeKitError(f"{weights} lacks tensor(s) {', '.join(missing)} for arch {cfg.arch!r}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise SaeKitError(
                f"{weights}: {name} has shape {tuple(state[name].shape)}, config says {tuple(tensor.shape)}"
            )
    model.load_state_dict({k: state[k] for k in expected})
    return model.to(device if device is not None else "cpu").eval()
