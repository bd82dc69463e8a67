"""Open any saved autoencoder sae-kit reads, whichever tool wrote it: `load_pretrained(path)`.

The format is recognised from the files in `path` (a directory, or the weights file itself):

    sae-kit run         config.json ("format": "sae-kit-autoencoder") + weights.safetensors
    SAELens             cfg.json + sae_weights.safetensors                     (`saelens`)
    sparsify            cfg.json + sae.safetensors, one directory per hook point (`sparsify`,
                        `sparsify_transcoder` when cfg.json says "transcode": true)
    Gemma Scope         params.npz (W_enc, W_dec, b_enc, b_dec, threshold)     (`gemmascope`)
    dictionary_learning ae.pt (torch.load(weights_only=True)) + config.json     (`dictionary_learning`)

Every command's --run goes through here: the package's `load_autoencoder`, `run_dirs` and
`run_info` are this module's. A sae-kit run directory (or sweep root) takes exactly the path of
`sae_kit.autoencoders.runs`; a foreign model records no activation store (commands then need
--store) and a hook point only where its format names one (else --hook).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sae_kit.autoencoders.base import CONFIG_FILE, FORMAT, Autoencoder
from sae_kit.autoencoders.dictionary_learning import DL_WEIGHTS, hook_of, import_dictionary_learning, read_dl_config
from sae_kit.autoencoders.gemmascope import GEMMASCOPE_PARAMS, gemmascope_file, gemmascope_provenance, import_gemmascope
from sae_kit.autoencoders.runs import RunInfo
from sae_kit.autoencoders.runs import load_autoencoder as load_run
from sae_kit.autoencoders.runs import run_dirs as runs_of
from sae_kit.autoencoders.saelens import SAELENS_CFG, SAELENS_WEIGHTS, import_saelens, saelens_hooks
from sae_kit.autoencoders.sparsify import (SPARSIFY_CFG, SPARSIFY_WEIGHTS, alias_of_hookpoint, import_sparsify,
                                           sparsify_hookpoints)
from sae_kit.autoencoders.sparsify_transcoder import import_sparsify_transcoder, transcoder_hooks
from sae_kit.errors import SaeKitError

FORMATS = ("sae-kit", "saelens", "sparsify", "gemma-scope", "dictionary-learning")


def _is_sae_kit_config(file: Path) -> bool:
    """config.json written by sae-kit (as opposed to dictionary_learning's of the same name)."""
    try:
        payload = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def detect_format(path: str | Path) -> tuple[str | None, Path]:
    """(format, directory): one of FORMATS, or None where no foreign format's files are present
    (a sae-kit run or sweep, or nothing readable: `sae_kit.autoencoders.runs` then says which).
    A file path (params.npz, ae.pt, a weights file) stands for its directory."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".npz" and path.name != GEMMASCOPE_PARAMS:
            return "gemma-scope", path
        path = path.parent
    if (path / CONFIG_FILE).is_file() and _is_sae_kit_config(path / CONFIG_FILE):
        return "sae-kit", path
    if (path / SAELENS_WEIGHTS).is_file() and (path / SAELENS_CFG).is_file():
        return "saelens", path
    if (path / SPARSIFY_WEIGHTS).is_file() and (path / SPARSIFY_CFG).is_file():
        return "sparsify", path
    if (path / GEMMASCOPE_PARAMS).is_file():
        return "gemma-scope", path
    if (path / DL_WEIGHTS).is_file():
        return "dictionary-learning", path
    hookpoints = sparsify_hookpoints(path)
    if hookpoints:
        raise SaeKitError(f"{path} holds sparsify coders for {len(hookpoints)} hook points; pass one of them: "
                          + ", ".join(str(path / h) for h in hookpoints))
    if (path / SAELENS_CFG).is_file():
        raise SaeKitError(f"{path} has {SAELENS_CFG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} "
                          "(sparsify); download the weights file too")
    return None, path


def load_pretrained(path: str | Path, device: str | torch.device | None = None) -> Autoencoder:
    """The autoencoder saved at `path` in any format of the module docstring, in eval mode, as the
    sae-kit model computing the same function on raw activations."""
    kind, directory = detect_format(path)
    if kind == "saelens":
        return import_saelens(directory, device=device)
    if kind == "sparsify":
        if _read_json(directory / SPARSIFY_CFG).get("transcode"):
            return import_sparsify_transcoder(directory, device=device)
        return import_sparsify(directory, device=device)
    if kind == "gemma-scope":
        return import_gemmascope(directory, device=device)
    if kind == "dictionary-learning":
        return import_dictionary_learning(directory, device=device)
    return load_run(directory, device=device)  # a sae-kit run, or its error


load_autoencoder = load_pretrained
"""What the package exports as `load_autoencoder`: every command's --run loads through it."""


def run_dirs(run: str | Path) -> dict[str, Path]:
    """name -> model path: a foreign model's own path, else `runs.run_dirs` (a run, or a sweep's runs)."""
    kind, directory = detect_format(run)
    if kind not in (None, "sae-kit"):
        return {directory.name: directory}
    return runs_of(run)


def run_info(path: str | Path) -> RunInfo:
    """The provenance of the model at `path`: a sae-kit run's `RunInfo.load`, else what the
    foreign model's files say (its hook and target where named, a model name; never a store),
    read from its small config files without loading the weights (Gemma Scope SAEs reach GBs);
    the same helpers the importers use, so it equals `RunInfo.of(load_pretrained(path))`."""
    kind, directory = detect_format(path)
    if kind in (None, "sae-kit"):
        return RunInfo.load(path)
    if kind == "gemma-scope":
        hook, provenance = gemmascope_provenance(gemmascope_file(directory))
        return RunInfo.from_metadata(provenance, hook)
    if kind == "dictionary-learning":
        trainer = read_dl_config(directory)
        return RunInfo.from_metadata({"model": {"spec": None, "name": trainer.get("lm_name")}}, hook_of(directory, trainer))
    raw = _read_json(directory / (SAELENS_CFG if kind == "saelens" else SPARSIFY_CFG))
    if kind == "saelens":
        return RunInfo.from_metadata({}, *saelens_hooks(raw))
    if raw.get("transcode"):
        return RunInfo.from_metadata({}, *transcoder_hooks(directory))
    return RunInfo.from_metadata({}, alias_of_hookpoint(directory.name))


def _read_json(file: Path) -> dict:
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeKitError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise SaeKitError(f"{file} is not a JSON object")
    return raw
