"""Training checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A checkpoint is a directory `RUN/checkpoint/` holding `state.json` and any number of
`NAME.safetensors` files. It is written to `checkpoint.tmp/` and swapped in by renames, so a
run killed at any moment leaves either the previous or the new checkpoint, never a mix.
Optimizer state dicts are split into their tensors (safetensors, keys `state.<param>.<key>`)
and a JSON index with the non-tensor values and the param groups.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sae_kit.errors import SaeKitError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
FORMAT = "sae-kit-checkpoint"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors {`state.<i>.<key>`: tensor} and a JSON-able index."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    index = {"param_groups": state_dict["param_groups"], "scalars": scalars,
             "tensor_keys": sorted(tensors)}
    return tensors, index


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], index: dict) -> None:
    """Inverse of `optimizer_to_tensors`: load the state into `optimizer` (same params, same order)."""
    state: dict[int, dict] = {}
    for name in index["tensor_keys"]:
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = tensors[name]
    for param_id, values in index["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in index["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_to_tensors() -> dict[str, torch.Tensor]:
    """torch's CPU RNG state (and every CUDA device's, where present) as uint8 tensors."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def rng_from_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Restore the RNG states saved by `rng_to_tensors`."""
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_checkpoint(run_dir: str | Path, state: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write `state` (JSON) and `files` (name -> tensors) as RUN/checkpoint, atomically.

    Order: write checkpoint.tmp/ completely (fsynced), move the old checkpoint aside, rename
    the new one into place, delete the old one. `find_checkpoint` copes with a kill between
    any two of these steps.
    """
    run_dir = Path(run_dir)
    final, tmp, old = (run_dir / f"{CHECKPOINT_DIR}{suffix}" for suffix in ("", ".tmp", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, tensors in files.items():
        path = tmp / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        _fsync(path)
    (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **state}, indent=2) + "\n")
    _fsync(tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = run_dir / name
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(state, files) of a checkpoint directory written by `save_checkpoint`."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SaeKitError(f"checkpoint {path} is unreadable ({err}); start the run again without --resume") from err
    if state.get("format") != FORMAT:
        raise SaeKitError(f"{path} is not an sae-kit checkpoint")
    files = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            files[file.stem] = load_file(str(file))
        except Exception as err:
            raise SaeKitError(f"checkpoint file {file} is damaged ({err}); start the run again without --resume") from err
    return state, files


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- a training run's state


def write_checkpoint(root: Path, cfg, slots, step: int, n_steps: int, stats, extra: dict | None = None) -> None:
    """Save a training run (`sae_kit.training.loop.Slot`s, TrainConfig, InputStats) at `step`: everything
    needed to continue bit-for-bit — weights, optimizer state, dead-latent trackers, PCA moments,
    RNG state and the reader position (batches consumed = step)."""
    files: dict[str, dict[str, torch.Tensor]] = {"rng": rng_to_tensors()}
    models = []
    for slot in slots:
        tensors = dict(slot.model.state_dict())
        if slot.tracker is not None:
            tensors["tracker.last_fired"] = slot.tracker.last_fired
        if slot.covariance is not None:
            tensors.update({f"covariance.{k}": v for k, v in slot.covariance.state_tensors().items()})
        files[f"model-{slot.name}"] = tensors
        entry = {"name": slot.name, "autoencoder": slot.spec.cfg.to_dict()}
        if slot.optimizer is not None:
            files[f"optimizer-{slot.name}"], entry["optimizer_index"] = optimizer_to_tensors(slot.optimizer)
        models.append(entry)
    state = {"step": step, "n_steps": n_steps, "tokens": step * cfg.batch_size, "training": cfg.to_dict(),
             "input_stats": asdict(stats), "models": models,
             "reader": {"seed": cfg.seed, "batch_size": cfg.batch_size, "skip_batches": step}, **(extra or {})}
    save_checkpoint(root, state, files)


def restore_checkpoint(slots, files: dict, state: dict) -> int:
    """Load a checkpoint into freshly built slots (RNG last); returns the step to continue from."""
    for slot, entry in zip(slots, state["models"], strict=True):
        tensors = files[f"model-{slot.name}"]
        slot.model.load_state_dict({k: v for k, v in tensors.items() if "." not in k})
        if slot.tracker is not None:
            slot.tracker.last_fired.copy_(tensors["tracker.last_fired"])
        if slot.covariance is not None:
            slot.covariance.load_state_tensors({k.split(".", 1)[1]: v for k, v in tensors.items()
                                                if k.startswith("covariance.")})
        if slot.optimizer is not None:
            optimizer_from_tensors(slot.optimizer, files[f"optimizer-{slot.name}"], entry["optimizer_index"])
    rng_from_tensors(files["rng"])
    return int(state["step"])
