"""The models of a run (`model_specs`: one per architecture and swept value) and the memory
they need (`check_memory`, refused up front with what to lower)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_kit.autoencoders import AutoencoderConfig, architecture
from sae_kit.errors import SaeKitError
from sae_kit.training.recipe import TrainConfig


@dataclass(frozen=True)
class ModelSpec:
    """One model of a (possibly multi-model) run: its name (sub-directory) and config."""

    name: str
    """Sub-run name, e.g. 'sae-l1_5', 'topk-k_32', 'pca'."""
    cfg: AutoencoderConfig
    """The model's config."""


SWEEP_VALUES = {"l1_coefficient": "l1_coefficients", "k": "ks", "l0_coefficient": "l0_coefficients"}
"""AutoencoderConfig field an architecture sweeps (its `sweep_field`) -> the TrainConfig field listing the values."""

ARCH_OPTIONS = ("jumprelu_sparsity", "jumprelu_bandwidth", "jumprelu_init_threshold", "tanh_scale",
                "pre_act_loss_coefficient", "jumprelu_threshold_lr_scale", "topk_threshold_lr", "matryoshka_prefixes")
"""TrainConfig fields passed unchanged to the AutoencoderConfig of every model (each arch reads its own)."""


def _fmt(value: float) -> str:
    return f"{value:g}".replace("+", "")


def model_specs(cfg: TrainConfig, d_in: int, hook: str | None = None, metadata: dict | None = None, *,
                d_out: int | None = None, target_hook: str | None = None) -> list[ModelSpec]:
    """The models `cfg` asks for, in a stable order: one per arch, times one per value of the
    field the architecture sweeps (λ for sae, k for topk, either for a transcoder by its
    activation). Widths follow each architecture's `width`: the dictionary (d_sae or
    expansion × d_in), the baselines' budget, or PCA components. Transcoders get d_out and
    target_hook (the target's width and hook)."""
    widths = {"dictionary": cfg.d_sae or cfg.expansion * d_in,
              "baseline": cfg.baseline_d_sae or cfg.d_sae or cfg.expansion * d_in,
              "components": cfg.pca_components or cfg.ks[0]}
    common = dict(d_in=d_in, hook=hook, metadata=dict(metadata or {}), auxk_coefficient=cfg.auxk_coefficient,
                  corruption=cfg.corruption, corruption_level=cfg.corruption_level, beta=cfg.beta,
                  d_out=d_out, target_hook=target_hook, transcoder_activation=cfg.transcoder_activation)
    common.update({name: getattr(cfg, name) for name in ARCH_OPTIONS})
    specs: list[ModelSpec] = []
    for arch in cfg.archs:
        cls = architecture(arch)
        fields = dict(common, arch=arch, d_sae=widths[cls.width])
        if cls.decoder_norm_choice:
            fields["decoder_norm"] = cfg.decoder_norm
        if cls.width == "components" and fields["d_sae"] > d_in:
            raise SaeKitError(f"PCA has at most d_in={d_in} components; lower --pca-components (got {fields['d_sae']})")
        sweep_field, sweep_label = cls.sweep_for(fields)
        if sweep_field is None:
            specs.append(ModelSpec(arch, AutoencoderConfig(**fields)))
            continue
        for value in getattr(cfg, SWEEP_VALUES[sweep_field]):
            name = f"{arch}-{sweep_label}_{_fmt(value)}"
            specs.append(ModelSpec(name, AutoencoderConfig(**{**fields, sweep_field: value})))
    return specs


def training_bytes(specs: list[ModelSpec], batch_size: int) -> int:
    """Memory a run needs, roughly: every model's parameters with their gradient and Adam's two
    moments (4 float32 copies), plus the step's [batch, d_sae] activations and gradients (4 more)."""
    total = 0
    for spec in specs:
        c = spec.cfg
        d_out = getattr(c, "d_out", None) or c.d_in
        total += 4 * 4 * (c.d_sae * (c.d_in + d_out) + c.d_sae + d_out)
        total += 4 * 4 * batch_size * c.d_sae
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: the GPU's free memory, or the host's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(specs: list[ModelSpec], batch_size: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a run that cannot fit in memory, saying what to lower."""
    need, free = training_bytes(specs, batch_size), available_bytes(device)
    if free is not None and need > 0.9 * free:
        widest = max(spec.cfg.d_sae for spec in specs)
        raise SaeKitError(f"the {len(specs)} model(s) need about {need / 2**30:.1f} GiB ({widest:,} latents, batches of "
                          f"{batch_size:,}) and {free / 2**30:.1f} GiB is available on {device}; lower --d-sae / "
                          "--expansion or --batch-size, or train fewer models at once")
