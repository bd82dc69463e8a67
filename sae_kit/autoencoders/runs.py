"""Run directories: loading a trained model, reading what it was trained on, and sweeps of several runs.

    RUN/config.json           {"format": "sae-kit-autoencoder", "autoencoder": {...}, "training": {...},
                               "provenance": {...}}
    RUN/weights.safetensors   the parameters (input scale folded in: the model takes raw activations)
    ROOT/sweep.json           a sweep: {"format": "sae-kit-sweep", "runs": [{"name", "path", ...}]}

`RunInfo` is the one typed view of a run's provenance (its store, hook point, a transcoder's
target hook, language model, input scale); every consumer (evaluation, analysis, steering, the
prompt view) reads it instead of digging in the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.autoencoders.base import CONFIG_FILE, FORMAT, WEIGHTS_FILE, Autoencoder
from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.registry import build_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.harvest.store import MANIFEST, read_manifest

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = "sae-kit-sweep"


@dataclass(frozen=True)
class RunInfo:
    """Where a model's training data came from. Every field may be unknown (None) for models
    imported from other tools; the accessors that need one say what to pass instead."""

    store: str | None = None
    """Absolute path of the activation store it was trained on."""
    hook: str | None = None
    """The hook point as the user named it (an alias such as resid.8 where one was used)."""
    hook_module: str | None = None
    """The module name the store holds it under (model.layers.8)."""
    model: str | None = None
    """The language model's spec ('default', a path or a hub id), as `load_model` takes it."""
    model_name: str | None = None
    """A short human-readable name of the language model."""
    context_len: int | None = None
    """Tokens per context of the store."""
    prepend_bos: bool = True
    """Whether the store's contexts start with BOS (position 0 is then never encoded)."""
    input_scale: float | None = None
    """The input scale s (E‖s·x‖ = √d_in) folded into the saved weights."""
    target_hook: str | None = None
    """A transcoder's target hook point as the user named it (mlp.3); None: the model reconstructs its input."""
    target_module: str | None = None
    """The target's name in the store and on the language model (model.layers.3.mlp)."""
    target_scale: float | None = None
    """The target scale s_y (E‖s_y·y‖ = √d_out) folded into the saved weights (transcoders)."""

    @classmethod
    def from_metadata(cls, metadata: dict | None, hook: str | None = None,
                      target_hook: str | None = None) -> "RunInfo":
        """From the provenance dict the trainer records (config.json's "provenance", or the
        model config's "metadata", which holds the same keys) and the config's hooks."""
        meta = metadata or {}
        model = meta.get("model")
        spec = model.get("spec") if isinstance(model, dict) else (model if isinstance(model, str) else None)
        name = model.get("name") if isinstance(model, dict) else None
        return cls(store=meta.get("store"), hook=hook or meta.get("hook_requested"),
                   hook_module=meta.get("hook_module"), model=spec or None, model_name=name,
                   context_len=meta.get("context_len"), prepend_bos=bool(meta.get("prepend_bos", True)),
                   input_scale=meta.get("input_scale_folded"),
                   target_hook=target_hook or meta.get("target_requested"), target_module=meta.get("target_module"),
                   target_scale=meta.get("target_scale_folded"))

    @classmethod
    def of(cls, model: Autoencoder) -> "RunInfo":
        """The provenance a loaded model carries in its config."""
        cfg = model.cfg
        return cls.from_metadata(getattr(cfg, "metadata", None), getattr(cfg, "hook", None),
                                 getattr(cfg, "target_hook", None))

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunInfo":
        """The provenance of a run directory."""
        payload = read_run_config(run_dir)
        auto = payload["autoencoder"]
        return cls.from_metadata(payload.get("provenance") or auto.get("metadata"), auto.get("hook"),
                                 auto.get("target_hook"))

    def to_metadata(self, model_identity: dict | None = None) -> dict:
        """The provenance dict as config.json stores it (`model` as the store manifest's identity)."""
        return {"store": self.store, "hook_module": self.hook_module, "hook_requested": self.hook,
                "model": model_identity if model_identity is not None else {"spec": self.model, "name": self.model_name},
                "context_len": self.context_len, "prepend_bos": self.prepend_bos,
                "input_scale_folded": self.input_scale, "target_module": self.target_module,
                "target_requested": self.target_hook, "target_scale_folded": self.target_scale}

    # -- what consumers need, with the error that says what to pass -----------------------------

    def store_path(self, override: str | None = None) -> str:
        """The store to read: `override`, else the one the run was trained on."""
        path = override or self.store
        if not path:
            raise SaeKitError("the run does not record its activation store; pass --store")
        return path

    @property
    def hook_point(self) -> str | None:
        """The hook to install on the language model: the name the user gave, else the module."""
        return self.hook or self.hook_module

    @property
    def stored_hook(self) -> str | None:
        """The hook to read from the store: the module name, else the name the user gave."""
        return self.hook_module or self.hook

    @property
    def target_point(self) -> str | None:
        """A transcoder's target hook to install on the language model (None for autoencoders)."""
        return self.target_hook or self.target_module

    @property
    def stored_target(self) -> str | None:
        """A transcoder's target hook to read from the store (None for autoencoders)."""
        return self.target_module or self.target_hook

    def splice_hooks(self, hook: str | None = None) -> tuple[str, str]:
        """(read, write): where the model's input is read on the language model and where its
        output replaces the activation. An autoencoder reads and writes its own hook; a
        transcoder (`Autoencoder.has_target`) reads the MLP input (mlp_in.L) and writes the MLP
        output (its target, mlp.L). `hook` overrides the input hook."""
        read = hook or self.hook_point
        if not read:
            raise SaeKitError("the run does not record its hook point; name it with --hook (e.g. resid.8)")
        return read, self.target_point or read

    def language_model(self, override: str | None = None) -> str:
        """The language model's spec: `override`, else the recorded one, else the store's."""
        if override:
            return override
        if self.model:
            return self.model
        if self.store and (Path(self.store) / MANIFEST).is_file():
            spec = read_manifest(Path(self.store)).get("model", {}).get("spec")
            if spec:
                return spec
        raise SaeKitError("the run does not record which language model it was trained on; name it with --model")


# ----------------------------------------------------------------------------- run directories


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
        raise SaeKitError(f"{run_dir} is not an autoencoder run directory (no {CONFIG_FILE}); train one with `sae-kit train`, "
                          "or pass a SAELens, sparsify, Gemma Scope (params.npz) or dictionary_learning (ae.pt) directory")
    try:
        payload = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeKitError(f"{file} is not valid JSON ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "autoencoder" not in payload:
        raise SaeKitError(f"{file} is not an sae-kit autoencoder config, and no SAELens, sparsify, Gemma Scope or "
                          "dictionary_learning weights file lies beside it; pass a run directory or one of those")
    return payload


def load_autoencoder(run_dir: str | Path, device: str | torch.device | None = None) -> Autoencoder:
    """Load any registered model from a run dir (weights.safetensors + config.json), in eval mode.

    Raises SaeKitError naming the problem (not a run dir, a sweep root, missing or mismatched
    weights).
    """
    run_dir = Path(run_dir)
    cfg = AutoencoderConfig.from_dict(read_run_config(run_dir)["autoencoder"])
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise SaeKitError(f"{run_dir} has a config but no {WEIGHTS_FILE}; the run did not finish saving")
    model = build_autoencoder(cfg)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise SaeKitError(f"{weights} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                          "the file is damaged: train the run again") from err
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


def run_dirs(run: str | Path) -> dict[str, Path]:
    """name -> run dir: the run itself, or every sub-run listed in a sweep root's sweep.json."""
    run = Path(run)
    sweep = run / SWEEP_FILE
    if sweep.is_file() and not (run / CONFIG_FILE).is_file():
        try:
            runs = json.loads(sweep.read_text())["runs"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SaeKitError(f"{sweep} is damaged ({err}); train the sweep again") from err
        return {r["name"]: run / r["path"] for r in runs}
    read_run_config(run)  # a clear error if this is not a run
    return {run.name: run}
