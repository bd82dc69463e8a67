"""Training from an activation store: `train(cfg)` opens the store, estimates the input scale,
runs the loop (`sae_kit.training.loop.fit`) and saves every model (input scale folded in) with
its metrics and provenance. With `cfg.target` (transcoders) the loop gets pairs (x, y) of two
hooks from one shuffled plan, each with its own scale, both folded into the saved weights.

    RUN/config.json, RUN/weights.safetensors, RUN/metrics.jsonl     one model
    RUN/<name>/..., RUN/sweep.json                                  several models, one pass
    RUN/checkpoint/                                                 while training (resume)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from sae_kit import __version__
from sae_kit.artifacts import atomic_write_json, atomic_write_text
from sae_kit.autoencoders import SWEEP_FILE, RunInfo
from sae_kit.autoencoders.base import CONFIG_FILE
from sae_kit.autoencoders.runs import SWEEP_FORMAT
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.models import choose_device
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint, restore_checkpoint
from sae_kit.training.loop import METRICS_FILE, Slot, fit, make_slot, summary_table
from sae_kit.training.recipe import (Derived, InputStats, ModelSpec, TrainConfig, check_memory, estimate_input_stats,
                                    model_specs, resolve, short_run_warning)

RESUME_MAY_CHANGE = ("device", "log_every", "checkpoint_every_tokens")
"""Settings a resumed run may change: they do not change the weights it reaches."""


def train(cfg: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None,
          progress: bool = True) -> list[Path]:
    """Train the models `cfg` asks for on an activation store; returns their run directories.

    One model: RUN holds it. Several (`archs`, `l1_coefficients`, `ks`): one sub-directory
    per model (RUN/sae-l1_5, RUN/topk-k_32, RUN/pca …) and RUN/sweep.json listing them; they
    all see the same batches in one pass over the data. `resume` continues from
    RUN/checkpoint and reaches the same weights as an uninterrupted run. `stop_after_steps`
    stops early as a kill would (for tests of resume); nothing final is written then.
    """
    out = Path(cfg.out)
    store = ActivationStore(cfg.store)
    hook = store.resolve_hook_name(cfg.hook)
    target = _resolve_target(store, cfg, hook)
    hooks = hook if target is None else (hook, target)  # a tuple: the store yields (x, y) pairs
    device = choose_device(cfg.device)
    n_train = store.count("train")
    cfg, derived = resolve(cfg, n_train)
    state, files = _checkpoint_to_resume(cfg, out, resume)
    if state is not None:
        derived = tuple(Derived(**d) for d in state.get("derived", []))
    n_steps = cfg.tokens // cfg.batch_size
    if n_steps < 1:
        raise SaeKitError(f"{cfg.tokens} tokens make no full batch of {cfg.batch_size}; "
                          "lower --batch-size or raise --tokens")
    # before reading any activation: the models must fit in memory
    check_memory(model_specs(cfg, store.d_in(hook), d_out=store.d_in(target) if target else None),
                 cfg.batch_size, device)
    stats = (InputStats(**state["input_stats"]) if state is not None
             else _estimate_stats(cfg, store, hooks, n_train))
    target_requested = (store.hooks[target].get("requested") or target) if target else None
    info = RunInfo(store=str(Path(cfg.store).resolve()), hook=store.hooks[hook].get("requested", hook),
                   hook_module=hook, context_len=store.context_len,
                   prepend_bos=store.manifest.get("prepend_bos", True), input_scale=stats.scale,
                   target_hook=target_requested, target_module=target, target_scale=stats.target_scale)
    metadata = info.to_metadata(store.manifest.get("model", {}))
    specs = model_specs(cfg, store.d_in(hook), hook=store.hooks[hook].get("requested") or hook, metadata=metadata,
                        d_out=store.d_in(target) if target else None, target_hook=target_requested)
    slots = build_slots(cfg, specs, out, device, stats)
    start_step = _restore_or_start(cfg, slots, state, files)

    _print_start(cfg, slots, hook, store, n_steps, device, start_step, stats, derived, target)

    def batches_from(skip: int) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        return store.batches(hooks, cfg.batch_size, shuffle=True, seed=cfg.seed, split="train", epochs=None,
                             skip_batches=skip, device=device)

    finished = fit(cfg, slots, batches_from, n_steps, stats, device=device, checkpoint_dir=out,
                   start_step=start_step, stop_after_steps=stop_after_steps, progress=progress,
                   checkpoint_extra={"derived": [dataclasses.asdict(d) for d in derived]})
    if not finished:  # stopped as a kill would: only the last periodic checkpoint remains
        return []
    provenance = {**metadata, "tokens_trained": n_steps * cfg.batch_size, "steps": n_steps,
                  "store_tokens": store.n_tokens, "sae_kit_version": __version__,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_models(cfg, slots, out, stats, provenance, derived)
    print(summary_table(slots), file=sys.stderr)
    return [slot.run_dir for slot in slots]


def _checkpoint_to_resume(cfg: TrainConfig, out: Path, resume: bool) -> tuple[dict | None, dict | None]:
    """The checkpoint a `--resume` continues (checked against `cfg`), or (None, None) for a fresh
    run, refused when `out` already holds one."""
    checkpoint = find_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise SaeKitError(f"--resume: {out} holds no checkpoint to continue from; start without --resume")
    if not resume and ((out / CONFIG_FILE).exists() or (out / SWEEP_FILE).exists() or find_checkpoint(out)):
        raise SaeKitError(f"{out} already holds a run; continue it with --resume or choose another --out")
    if checkpoint is None:
        return None, None
    state, files = load_checkpoint(checkpoint)
    check_resume_matches(TrainConfig.from_dict(state["training"]), cfg)
    if state["step"] >= state["n_steps"]:
        raise SaeKitError(f"{out}: the checkpoint is at the last step already; nothing to resume")
    return state, files


def _resolve_target(store: ActivationStore, cfg: TrainConfig, hook: str) -> str | None:
    """The stored name of the target hook (transcoders), checked to differ from the input hook."""
    if cfg.target is None:
        return None
    target = store.resolve_hook_name(cfg.target)
    if target == hook:
        raise SaeKitError(f"--target {cfg.target} is the input hook itself; a transcoder predicts another hook "
                          "(e.g. --hook mlp_in.3 --target mlp.3)")
    return target


def _estimate_stats(cfg: TrainConfig, store: ActivationStore, hooks: str | tuple[str, str], n_train: int) -> InputStats:
    """The input scale (and mean / median) from the first batches of a differently seeded reader;
    for (input, target) hooks the target's too, from the same rows."""
    reader = store.batches(hooks, min(cfg.batch_size, n_train), seed=cfg.seed + 1, epochs=None)
    with contextlib.closing(reader):
        return estimate_input_stats(reader, cfg.norm_estimation_tokens, cfg.normalize_inputs,
                                    cfg.b_dec_init == "geometric_median")


def build_slots(cfg: TrainConfig, specs: list[ModelSpec], out: Path, device: torch.device,
                stats: InputStats) -> list[Slot]:
    """One initialised model per spec, each with its run directory (RUN itself, or RUN/<name>)."""
    window_steps = math.ceil(cfg.dead_window_tokens / cfg.batch_size)
    slots = [make_slot(spec, cfg, device, window_steps, stats) for spec in specs]
    for slot in slots:
        slot.run_dir = out / slot.name if len(slots) > 1 else out
        slot.run_dir.mkdir(parents=True, exist_ok=True)
    return slots


def _restore_or_start(cfg: TrainConfig, slots: list[Slot], state: dict | None, files: dict | None) -> int:
    """Load the checkpoint into the slots (returns its step), or start fresh at step 0."""
    if state is None:
        for slot in slots:  # a fresh run: drop metrics of an earlier attempt killed before its first checkpoint
            (slot.run_dir / METRICS_FILE).unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)  # the training stream (noise, VAE samples, resampling)
        return 0
    saved_names = [m["name"] for m in state["models"]]
    if saved_names != [slot.name for slot in slots]:
        raise SaeKitError(f"the checkpoint holds models {saved_names}, the config asks for {[s.name for s in slots]}")
    start_step = restore_checkpoint(slots, files, state)
    for slot in slots:
        truncate_metrics(slot.run_dir / METRICS_FILE, start_step)
    return start_step


def _print_start(cfg, slots, hook, store, n_steps, device, start_step, stats, derived, target=None) -> None:
    predicts = f" -> {target} (d_out={store.d_in(target)})" if target else ""
    print(f"sae-kit train: {len(slots)} model(s) on {hook} (d_in={store.d_in(hook)}){predicts} of {cfg.store}: "
          f"{n_steps} steps × {cfg.batch_size} = {n_steps * cfg.batch_size:,} tokens on {device}"
          + (f", resuming at step {start_step}" if start_step else ""), file=sys.stderr)
    warning = short_run_warning(cfg)
    if warning:
        print(f"sae-kit train: {warning}", file=sys.stderr)
    names = {d.field for d in derived}
    print("training config:\n" + "\n".join(line.replace("  (set)", "  (derived)") if line.split()[0] in names
                                            else line for line in cfg.describe().splitlines()), file=sys.stderr)
    for d in derived:
        print(f"  {'':<24} {d.field}: {d.rule}", file=sys.stderr)
    print(f"  {'input_scale':<24} {stats.scale:.6g}  (E‖x‖ = √d_in on {stats.n_tokens} tokens)", file=sys.stderr)
    if stats.target_scale is not None:
        print(f"  {'target_scale':<24} {stats.target_scale:.6g}  (E‖y‖ = √d_out)", file=sys.stderr)
    for slot in slots:
        model, spec_cfg = slot.model, slot.spec.cfg
        swept = (f" {model.sweep_label}={getattr(spec_cfg, model.sweep_field):g}" if model.sweep_field else "")
        print(f"  model {slot.name}: d_sae={spec_cfg.d_sae} decoder_norm={spec_cfg.decoder_norm}{swept}", file=sys.stderr)


def save_models(cfg: TrainConfig, slots: list[Slot], out: Path, stats: InputStats, provenance: dict,
                derived: tuple[Derived, ...] = ()) -> None:
    """Save every model (input scale folded in) and, for several, RUN/sweep.json listing them.
    config.json's "training" is the resolved config; "derived" says which settings were derived, how."""
    for slot in slots:
        slot.model.eval()
        slot.model.fold_scales_(stats.scale, stats.target_scale)
        slot.model.save(slot.run_dir, extra={"name": slot.name, "training": cfg.to_dict(), "provenance": provenance,
                                             "derived": [dataclasses.asdict(d) for d in derived],
                                             "final_train_metrics": slot.last_metrics})
    if len(slots) > 1:
        runs = [{"name": s.name, "path": s.name, "arch": s.spec.cfg.arch, "d_sae": s.spec.cfg.d_sae,
                 "l1_coefficient": s.spec.cfg.l1_coefficient if s.model.sweep_field == "l1_coefficient" else None,
                 "k": s.spec.cfg.k} for s in slots]
        atomic_write_json(out / SWEEP_FILE, {"format": SWEEP_FORMAT, "runs": runs, "training": cfg.to_dict()})


def check_resume_matches(saved: TrainConfig, given: TrainConfig) -> None:
    """A resumed run must be the same run: only device, log_every, checkpoint interval may change."""
    a, b = saved.to_dict(), given.to_dict()
    differ = [k for k in a if k not in RESUME_MAY_CHANGE and a[k] != b[k]]
    if differ:
        detail = ", ".join(f"{k}: checkpoint {a[k]!r} vs now {b[k]!r}" for k in differ)
        raise SaeKitError(f"--resume with different settings ({detail}); resume with the original settings")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines logged after `step` (they will be logged again after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
