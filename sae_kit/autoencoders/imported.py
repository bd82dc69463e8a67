"""What every `sae-kit import FORMAT` shares: the config of a format that needs only a path and a
hook (`ImportConfig`: Gemma Scope, dictionary_learning) and writing the imported model as a normal
run directory (`write_imported_run`). Each format's reader stays in its own module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sae_kit.autoencoders.base import CONFIG_FILE, Autoencoder
from sae_kit.autoencoders.runs import RunInfo
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError


@dataclass(frozen=True)
class ImportConfig(JsonConfig):
    """`sae-kit import gemmascope|dictionary-learning`: another tool's saved SAE written as an
    sae-kit run directory."""

    config_name = "import config"

    path: str
    """The saved SAE: its file (params.npz, ae.pt) or the directory holding it."""
    out: str
    """The run directory to write (weights.safetensors + config.json)."""
    hook: str | None = None
    """The hook point it reads (e.g. resid.12); None: read from the path where the format's layout
    names it (Gemma Scope's layer_L/…, dictionary_learning's resid_out_layerL), else unknown."""
    overwrite: bool = False
    """Replace a run already in --out."""


def write_imported_run(model: Autoencoder, out: str | Path, overwrite: bool, source: str, source_path: Path) -> Path:
    """Save an imported model as a normal run directory (load_autoencoder, evaluate, analyze,
    dashboard and steer open it; the store and language model are then given with --store/--model).
    `source` names the format and `source_path` the files read, in the run's provenance."""
    out = Path(out)
    if (out / CONFIG_FILE).exists() and not overwrite:
        raise SaeKitError(f"{out} already holds a run; choose another --out or pass --overwrite")
    provenance = {**RunInfo.of(model).to_metadata(), "source": source, "source_path": str(Path(source_path).resolve())}
    return model.save(out, extra={"name": out.name, "provenance": provenance})
