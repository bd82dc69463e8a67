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

from sae_kit import faults
from sae_kit.errors import SaeKitError
from sae_kit.training.distributed import SINGLE, Distributed

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


def rank_file(name: str, ranks: Distributed) -> str:
    """The checkpoint file of a per-rank state: NAME in one process, NAME.rank-R among several."""
    return f"{name}.rank-{ranks.rank}" if ranks.enabled else name


def save_checkpoint(run_dir: str | Path, state: dict, files: dict[str, dict[str, torch.Tensor]], *,
                    ranks: Distributed = SINGLE, rank_files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write `state` (JSON) and `files` (name -> tensors) as RUN/checkpoint, atomically.

    Order: write checkpoint.tmp/ completely (fsynced), move the old checkpoint aside, rename
    the new one into place, delete the old one. `find_checkpoint` copes with a kill between
    any two of these steps. Under torchrun every rank calls this: rank 0 writes `state` and
    `files`, every rank writes its own `rank_files` (as NAME.rank-R) into the same temporary
    directory, and rank 0 renames it once all are written.
    """
    run_dir = Path(run_dir)
    final, tmp, old = (run_dir / f"{CHECKPOINT_DIR}{suffix}" for suffix in ("", ".tmp", ".old"))
    if ranks.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier()
    mine = {rank_file(name, ranks): tensors for name, tensors in (rank_files or {}).items()}
    for name, tensors in {**(files if ranks.is_main else {}), **mine}.items():
        path = tmp / f"{name}.safetensors"
        faults.maybe_disk_full(path)  # the fault suite's full disk, as the real one would fail here
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        _fsync(path)
    ranks.barrier()
    if ranks.is_main:
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **state}, indent=2) + "\n")
        _fsync(tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    ranks.barrier()
    return final


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = run_dir / name
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def load_checkpoint(path: str | Path, ranks: Distributed = SINGLE) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(state, files) of a checkpoint directory written by `save_checkpoint`; of the per-rank
    files (NAME.rank-R) only this rank's are read, under their plain NAME."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SaeKitError(f"checkpoint {path} is unreadable ({err}); start the run again without --resume") from err
    if state.get("format") != FORMAT:
        raise SaeKitError(f"{path} is not an sae-kit checkpoint")
    files = {}
    for file in sorted(path.glob("*.safetensors")):
        name, _, rank = file.stem.partition(".rank-")
        if rank and (not ranks.enabled or int(rank) != ranks.rank):
            continue
        try:
            files[name] = load_file(str(file))
        except Exception as err:
            raise SaeKitError(f"checkpoint file {file} is damaged ({err}); start the run again without --resume") from err
    return state, files


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- a training run's state


def write_checkpoint(root: Path, cfg, slots, step: int, n_steps: int, stats, *, ranks: Distributed = SINGLE,
                     source: dict[str, torch.Tensor] | None = None, extra: dict | None = None) -> None:
    """Save a training run (`sae_kit.training.loop.Slot`s, TrainConfig, InputStats) at `step`: everything
    needed to continue bit-for-bit — weights, optimizer state, dead-latent trackers, PCA moments,
    RNG state and the reader position (batches consumed = step), or the on-the-fly `source`'s
    own state. Under torchrun every rank calls it (see `save_checkpoint`): the RNG and the
    source state are per rank; a sharded model is gathered whole, so the files are the same
    as one process writes."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    models = []
    for slot in slots:
        if slot.parallel is not None:
            slot.parallel.export_state(slot)
        full = getattr(slot.parallel, "full_state", None)
        tensors, optimizer = full(slot) if full else (dict(slot.model.state_dict()),
                                                      slot.optimizer and optimizer_to_tensors(slot.optimizer))
        if slot.tracker is not None:
            tensors["tracker.last_fired"] = tracker_state(slot)
        if slot.covariance is not None:
            tensors.update({f"covariance.{k}": v for k, v in slot.covariance.state_tensors().items()})
        files[f"model-{slot.name}"] = tensors
        entry = {"name": slot.name, "autoencoder": slot.spec.cfg.to_dict()}
        if slot.stats is not None:
            entry["input_stats"] = asdict(slot.stats)
        if optimizer:
            files[f"optimizer-{slot.name}"], entry["optimizer_index"] = optimizer
        models.append(entry)
    state = {"step": step, "n_steps": n_steps, "tokens": step * cfg.batch_size, "training": cfg.to_dict(),
             "input_stats": asdict(stats), "models": models, "world_size": ranks.world_size,
             "reader": {"seed": cfg.seed, "batch_size": cfg.batch_size, "skip_batches": step}, **(extra or {})}
    rank_files = {"rng": rng_to_tensors(), **({"source": source} if source is not None else {})}
    save_checkpoint(root, state, files, ranks=ranks, rank_files=rank_files)


def tracker_state(slot) -> torch.Tensor:
    """The dead-latent tracker's last-fired steps [d_sae] of the whole model."""
    gather = getattr(slot.parallel, "gather_latents", None)
    return gather(slot.tracker.last_fired) if gather else slot.tracker.last_fired


def restore_checkpoint(slots, files: dict, state: dict, ranks: Distributed = SINGLE) -> int:
    """Load a checkpoint into freshly built slots (RNG last); returns the step to continue from."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != ranks.world_size:
        raise SaeKitError(f"the checkpoint was written by {saved_world} process(es), this run has {ranks.world_size}; "
                          f"resume with the same count (torchrun --nproc-per-node {saved_world} …, or no torchrun for 1)")
    for slot, entry in zip(slots, state["models"], strict=True):
        tensors = files[f"model-{slot.name}"]
        optimizer = (files[f"optimizer-{slot.name}"], entry["optimizer_index"]) if slot.optimizer is not None else None
        load = getattr(slot.parallel, "load_full_state", None)
        if load:
            load(slot, tensors, optimizer)
        else:
            slot.model.load_state_dict({k: v for k, v in tensors.items() if "." not in k})
            if optimizer:
                optimizer_from_tensors(slot.optimizer, *optimizer)
            if slot.tracker is not None:
                slot.tracker.last_fired.copy_(tensors["tracker.last_fired"])
        if slot.covariance is not None:
            slot.covariance.load_state_tensors({k.split(".", 1)[1]: v for k, v in tensors.items()
                                                if k.startswith("covariance.")})
        if slot.parallel is not None:
            slot.parallel.after_restore(slot)
    rng_from_tensors(files["rng"])
    return int(state["step"])
