"""The autoencoder config: one frozen dataclass for every architecture, saved in each run's config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from sae_kit.autoencoders.registry import architecture
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError


@dataclass(frozen=True)
class AutoencoderConfig(JsonConfig):
    """What a saved autoencoder is: enough to rebuild it and load its weights.

    Fields that do not apply to `arch` keep their defaults and are ignored.
    """

    config_name = "autoencoder config"

    arch: str
    """Which model: a name in the registry (sae, topk, ae, dae, vae, pca, transcoder, skip-transcoder;
    see ARCH_DESCRIPTIONS)."""
    d_in: int
    """Input width: the hooked activation's dimension."""
    d_sae: int
    """Number of latents (for PCA: components, at most d_in)."""
    l1_coefficient: float = 5.0
    """λ of the sae loss ‖x − x̂‖² + λ Σ_i z_i ‖W_dec,i‖ (Anthropic April 2024: 5 at E‖x‖ = √d)."""
    k: int | None = None
    """Active latents per token of the topk model (required for arch='topk')."""
    auxk_coefficient: float = 1 / 32
    """Weight α of the AuxK loss for dead latents (Gao et al. 2024 use 1/32); 0 turns it off."""
    auxk_k: int | None = None
    """Latents the AuxK loss lets through (k_aux); None means d_in // 2 (as in Gao et al. / SAELens)."""
    decoder_norm: Literal["free", "unit"] | None = None
    """'free': decoder columns unconstrained (the April 2024 recipe, norm-weighted L1); 'unit':
    columns kept at norm 1 with the parallel gradient removed (Anthropic 2023, Gao et al. 2024).
    None means the architecture's default (`default_decoder_norm`: 'unit' for topk, 'free' otherwise)."""
    init_decoder_norm: float = 0.1
    """Norm of each decoder column at init; W_enc = W_decᵀ (April 2024). Unit-norm decoders use 1."""
    corruption: Literal["gaussian", "dropout"] = "gaussian"
    """Denoising (dae): add Gaussian noise to the input, or zero input coordinates at random."""
    corruption_level: float = 0.2
    """Denoising: the noise std (in units of the normalised input, whose per-coordinate RMS is
    about 1) or the dropout probability."""
    beta: float = 1.0
    """VAE: weight β of the KL term (β = 1 is the plain ELBO)."""
    hook: str | None = None
    """The hook point the model was trained on (module name or alias), if known."""
    metadata: dict = field(default_factory=dict)
    """Provenance (store path, LM spec, input scale folded in, …): JSON-serialisable, free-form."""
    l0_coefficient: float = 1.0
    """λ of the jumprelu L0 penalty λ Σ_i H(pre_i − θ_i) (or of its tanh surrogate); warmed up like
    the L1 λ. 1 at E‖x‖ = √d_in, SAELens' default (Rajamanoharan et al. 2024, "Jumping Ahead")."""
    jumprelu_bandwidth: float = 0.001
    """Bandwidth ε of the rectangle kernel in the jumprelu straight-through estimators (Gemma Scope: 0.001)."""
    jumprelu_init_threshold: float = 0.001
    """Initial per-latent threshold θ of jumprelu (Gemma Scope: 0.001); stored as log θ."""
    jumprelu_sparsity: Literal["step", "tanh"] = "step"
    """jumprelu penalty: 'step' = λ Σ_i H(pre_i − θ_i) (Gemma Scope's L0); 'tanh' = λ Σ_i tanh(c·z_i‖W_dec,i‖)
    (Anthropic's 2025 update; SAELens' jumprelu_sparsity_loss_mode='tanh')."""
    tanh_scale: float = 4.0
    """c of the tanh penalty (SAELens' jumprelu_tanh_scale default)."""
    pre_act_loss_coefficient: float = 0.0
    """Weight of Anthropic's 2025 pre-activation penalty Σ_i ReLU(θ_i − pre_i)‖W_dec,i‖ on dead latents
    (jumprelu; 3e-6 in Anthropic's setup, 0 turns it off)."""
    jumprelu_threshold_lr_scale: float = 1.0
    """jumprelu: the learning rate of log θ is the trainer's lr times this. Adam moves log θ by about
    lr per step, so from θ = 0.001 the thresholds need ~ln(θ_final/0.001)/lr steps: 1 (Gemma Scope,
    which trains ~10^5 steps) or more for short runs."""
    topk_threshold_lr: float = 0.01
    """batchtopk / matryoshka: rate r of the running threshold θ ← (1 − r)·θ + r·(smallest kept
    activation of the batch), which replaces the batch selection at inference (SAELens' name and default)."""
    matryoshka_prefixes: tuple[int, ...] | None = None
    """matryoshka: nested prefix sizes m_1 < … < m_n (d_sae is appended when the last is smaller);
    None means d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae (Bussmann et al. 2025)."""
    d_out: int | None = None
    """Output width: the target's dimension for a transcoder (W_dec [d_sae, d_out]); None means d_in."""
    target_hook: str | None = None
    """Transcoders: the hook point whose activation the model predicts (e.g. mlp.3, its input
    being mlp_in.3); None for autoencoders, which reconstruct their input hook."""
    transcoder_activation: Literal["relu", "topk"] = "relu"
    """Transcoders' sparsity: 'relu' (ReLU + decoder-norm-weighted L1, λ = l1_coefficient, as
    arch sae; Dunefsky et al. 2024) or 'topk' (TopK + AuxK, k latents, as arch topk; Paulo et al. 2025)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = architecture(self.arch)
        if self.d_in < 1 or self.d_sae < 1:
            raise SaeKitError(f"d_in and d_sae must be positive (got d_in={self.d_in}, d_sae={self.d_sae})")
        if min(self.l1_coefficient, self.beta, self.auxk_coefficient, self.l0_coefficient,
               self.pre_act_loss_coefficient) < 0:
            raise SaeKitError("l1_coefficient, l0_coefficient, beta, auxk_coefficient and pre_act_loss_coefficient "
                              "must be non-negative")
        if self.corruption not in ("gaussian", "dropout"):
            raise SaeKitError(f"corruption must be 'gaussian' or 'dropout' (got {self.corruption!r})")
        if self.corruption == "dropout" and not 0 <= self.corruption_level < 1:
            raise SaeKitError(f"a dropout probability must be in [0, 1) (got {self.corruption_level})")
        if self.decoder_norm not in (None, "free", "unit"):
            raise SaeKitError(f"decoder_norm must be 'free' or 'unit' (got {self.decoder_norm!r})")
        if self.decoder_norm is None:  # resolve the architecture default once, at construction
            object.__setattr__(self, "decoder_norm", cls.default_decoder_norm)
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        if self.d_out < 1:
            raise SaeKitError(f"d_out must be positive (got {self.d_out})")
        if self.d_out != self.d_in and not cls.has_target:
            raise SaeKitError(f"arch {self.arch!r} reconstructs its input, so d_out = d_in = {self.d_in} "
                              f"(got d_out={self.d_out}); transcoders predict another width")
        if self.transcoder_activation not in ("relu", "topk"):
            raise SaeKitError(f"transcoder_activation must be 'relu' or 'topk' (got {self.transcoder_activation!r})")
        cls.check_config(self)
        try:
            json.dumps(self.metadata)
        except TypeError as err:
            raise SaeKitError(f"autoencoder metadata must be JSON-serialisable ({err})") from err

    @property
    def k_aux(self) -> int:
        """Latents the AuxK loss lets through: auxk_k, or d_in // 2."""
        return self.auxk_k if self.auxk_k is not None else max(1, self.d_in // 2)
