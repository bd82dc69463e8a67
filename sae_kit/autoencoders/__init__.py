"""The autoencoder core: one interface, a registry of architectures, one on-disk format.

Every model is an `nn.Module` with `cfg` (`AutoencoderConfig`), `d_in`, `d_sae`, tensors
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]` (SAELens shapes)
and the methods

    encode(x [..., d_in]) -> z [..., d_sae]           deterministic (the VAE returns μ)
    decode(z [..., d_sae]) -> x_hat [..., d_out]      d_out = d_in but for transcoders
    reconstruct(x) -> x_hat                          decode(encode(x)) (+ a skip transcoder's x W_skip)
    training_loss(x [batch, d_in], TrainingState, target=None) -> ForwardOutput(x_hat, z, losses, loss)
    forward(x) = training_loss(x, TrainingState())   the losses at the config's coefficients
    subset_encoder(features) -> (x -> z[..., features])
    save(run_dir)                                    weights.safetensors + config.json

Modules: `base` (the shared core and the registry's contract), one module per family (`sae`,
`topk`, `batchtopk`, `jumprelu`, `gated`, `matryoshka`, `dense`, `vae`, `pca`, `transcoder`), `fused`
(the L1 SAE's hand-written backward), `losses`, `registry`, `config`, `runs` (RunInfo, load_autoencoder,
sweeps), `saelens`, `sparsify`, `sparsify_transcoder`, `gemmascope` and `dictionary_learning` (interop),
`pretrained` (`load_pretrained`: any of those formats; the package's `load_autoencoder`, `run_dirs`
and `run_info` are its, so every command's --run takes them).
Saved models take raw activations: the trainer's input scale (E‖x‖ = √d_in) is folded into the
weights before saving. This package imports no trainer, analysis or CLI code.
"""

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState
from sae_kit.autoencoders.batchtopk import BatchTopKSparseAutoencoder
from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.dense import DenoisingAutoencoder, DenseAutoencoder
from sae_kit.autoencoders.gated import GatedSparseAutoencoder
from sae_kit.autoencoders.jumprelu import JumpReLUSparseAutoencoder
from sae_kit.autoencoders.matryoshka import MatryoshkaSparseAutoencoder
from sae_kit.autoencoders.pca import PCA, CovarianceAccumulator
from sae_kit.autoencoders.pretrained import load_autoencoder, load_pretrained, run_dirs, run_info
from sae_kit.autoencoders.registry import ARCH_DESCRIPTIONS, ARCHITECTURES, ARCHS, architecture, build_autoencoder
from sae_kit.autoencoders.runs import SWEEP_FILE, RunInfo, read_run_config
from sae_kit.autoencoders.sae import SparseAutoencoder
from sae_kit.autoencoders.topk import TopKSparseAutoencoder
from sae_kit.autoencoders.transcoder import SkipTranscoder, Transcoder
from sae_kit.autoencoders.vae import VariationalAutoencoder

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "ARCH_DESCRIPTIONS",
    "Autoencoder",
    "AutoencoderConfig",
    "BatchTopKSparseAutoencoder",
    "CovarianceAccumulator",
    "DenoisingAutoencoder",
    "DenseAutoencoder",
    "ForwardOutput",
    "GatedSparseAutoencoder",
    "JumpReLUSparseAutoencoder",
    "MatryoshkaSparseAutoencoder",
    "PCA",
    "RunInfo",
    "SWEEP_FILE",
    "SkipTranscoder",
    "SparseAutoencoder",
    "TopKSparseAutoencoder",
    "TrainingState",
    "Transcoder",
    "VariationalAutoencoder",
    "architecture",
    "build_autoencoder",
    "load_autoencoder",
    "load_pretrained",
    "read_run_config",
    "run_dirs",
    "run_info",
]
