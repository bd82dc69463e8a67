"""The registry of architectures: `--arch` name -> the class that implements it.

Everything that differs between architectures is declared on the class (see the class
attributes of `sae_kit.autoencoders.base.Autoencoder`): the trainer, evaluation, analysis,
steering, interop and the demo read those and never test an architecture's name. Adding an
architecture is one new module with its class and one line in ARCHITECTURES below (the
README's "Contributing an architecture" walks through it). The order here is the order of
`--help`, of tables and of figures.
"""

from __future__ import annotations

from sae_kit.autoencoders.base import Autoencoder
from sae_kit.autoencoders.batchtopk import BatchTopKSparseAutoencoder
from sae_kit.autoencoders.dense import DenoisingAutoencoder, DenseAutoencoder
from sae_kit.autoencoders.gated import GatedSparseAutoencoder
from sae_kit.autoencoders.jumprelu import JumpReLUSparseAutoencoder
from sae_kit.autoencoders.matryoshka import MatryoshkaSparseAutoencoder
from sae_kit.autoencoders.pca import PCA
from sae_kit.autoencoders.sae import SparseAutoencoder
from sae_kit.autoencoders.topk import TopKSparseAutoencoder
from sae_kit.autoencoders.transcoder import SkipTranscoder, Transcoder
from sae_kit.autoencoders.vae import VariationalAutoencoder
from sae_kit.errors import SaeKitError

ARCHITECTURES: dict[str, type[Autoencoder]] = {cls.arch: cls for cls in (
    SparseAutoencoder,
    TopKSparseAutoencoder,
    BatchTopKSparseAutoencoder,
    JumpReLUSparseAutoencoder,
    GatedSparseAutoencoder,
    MatryoshkaSparseAutoencoder,
    DenseAutoencoder,
    DenoisingAutoencoder,
    VariationalAutoencoder,
    PCA,
    Transcoder,
    SkipTranscoder,
)}
ARCHS: tuple[str, ...] = tuple(ARCHITECTURES)
ARCH_DESCRIPTIONS: dict[str, str] = {name: cls.description for name, cls in ARCHITECTURES.items()}


def architecture(name: str) -> type[Autoencoder]:
    """The class registered as `name`; a one-line error listing the valid names otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise SaeKitError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}") from None


def build_autoencoder(cfg) -> Autoencoder:
    """A freshly initialised model for `cfg` (an AutoencoderConfig; its class is chosen by cfg.arch)."""
    return architecture(cfg.arch)(cfg)
