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
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint, restore_checkpoint
from sae_kit.training.dead_latents import DeadLatentTracker
from sae_kit.training.derive import Derived, resolve, short_run_warning
from sae_kit.training.distributed import SINGLE, DataParallel, Distributed
from sae_kit.training.input_stats import InputStats, estimate_input_stats
from sae_kit.training.loop import METRICS_FILE, Slot, adam, fit, make_slot, summary_table
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.sharding import LatentSharding, check_shardable
from sae_kit.training.specs import ModelSpec, check_memory, model_specs
from sae_kit.training.stream import StreamSource

RESUME_MAY_CHANGE = ("device", "model_device", "log_every", "checkpoint_every_tokens")
"""Settings a resumed run may change: they do not change the weights it reaches."""


def train(cfg: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None,
          progress: bool = True, ranks: Distributed = SINGLE) -> list[Path]:
    """Train the models `cfg` asks for, from an activation store or on the fly; returns their run
    directories.

    One model: RUN holds it. Several (`archs`, `l1_coefficients`, `ks`, several hooks on the
    fly): one sub-directory per model (RUN/sae-l1_5, RUN/topk-k_32, RUN/resid.3 …) and
    RUN/sweep.json listing them; they all see the same batches in one pass over the data.
    `resume` continues from RUN/checkpoint and reaches the same weights as an uninterrupted run.
    `stop_after_steps` stops early as a kill would (for tests of resume); nothing final is
    written then. Under torchrun (`ranks`) every rank calls this: data parallel by default, the
    latents split over the ranks with `shard_latents`; rank 0 writes the files.
    """
    out = Path(cfg.out)
    # the settings left open (batch size, lr, tokens, b_dec init) follow from the run's size
    cfg, derived = resolve(cfg, cfg.tokens if cfg.on_the_fly else ActivationStore(cfg.store).count("train"))
    state, files = _checkpoint_to_resume(cfg, out, resume, ranks)
    if state is not None:
        derived = tuple(Derived(**d) for d in state.get("derived", []))
    if cfg.shard_latents:
        check_shardable(cfg, ranks)
    device = ranks.device(cfg.device)
    source = (StreamSource if cfg.on_the_fly else StoreSource)(cfg, ranks, device, out)
    # before reading any activation: the models must fit in memory
    check_memory([spec for _, requested, d_in in source.hooks
                  for spec in model_specs(cfg, d_in, d_out=source.d_out)], cfg.batch_size // ranks.world_size, device)
    stats = source.input_stats(state)
    slots = build_slots(cfg, source, out, device, stats, ranks)
    start_step = _restore_or_start(cfg, slots, state, files, ranks)
    if ranks.is_main:
        _print_start(cfg, slots, source, device, start_step, stats, derived)
    first = stats[source.hooks[0][0]]
    finished = fit(cfg, slots, source.batches_from(files if state is not None else None), source.n_steps, first,
                   device=device, checkpoint_dir=out, start_step=start_step, stop_after_steps=stop_after_steps,
                   progress=progress and ranks.is_main, ranks=ranks, source_state=source.state,
                   checkpoint_extra={"derived": [dataclasses.asdict(d) for d in derived]})
    if not finished:  # stopped as a kill would: only the last periodic checkpoint remains
        return []
    provenance = {"tokens_trained": source.n_steps * cfg.batch_size, "steps": source.n_steps,
                  "sae_kit_version": __version__, **source.provenance(),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_models(cfg, slots, out, provenance, derived, ranks)
    if ranks.is_main:
        print(summary_table(slots), file=sys.stderr)
    return [slot.run_dir for slot in slots]


class StoreSource:
    """Where a store run's batches come from: the store, its one hook (and a transcoder's target
    hook), a seeded shuffled reader (under data parallelism, each rank reads its slice of every
    batch)."""

    def __init__(self, cfg: TrainConfig, ranks: Distributed, device: torch.device, out: Path):
        self.cfg, self.ranks, self.device = cfg, ranks, device
        self.store = store = ActivationStore(cfg.store)
        hook = store.resolve_hook_name(cfg.hook)
        self.hooks = [(hook, store.hooks[hook].get("requested") or hook, store.d_in(hook))]
        target = _resolve_target(store, cfg, hook)
        self.target = (target, store.hooks[target].get("requested") or target, store.d_in(target)) if target else None
        """(stored name, requested name, d_out) of a transcoder's target hook; None for autoencoders."""
        self.n_train = store.count("train")
        self.n_steps = cfg.tokens // cfg.batch_size
        if self.n_steps < 1:
            raise SaeKitError(f"{cfg.tokens} tokens make no full batch of {cfg.batch_size}; "
                              "lower --batch-size or raise --tokens")
        self.part = (ranks.rank, ranks.world_size) if ranks.enabled and not cfg.shard_latents else None
        if self.part and cfg.batch_size % ranks.world_size:
            raise SaeKitError(f"--batch-size {cfg.batch_size} does not split evenly over {ranks.world_size} ranks")
        self.model_identity = store.manifest.get("model", {})

    @property
    def d_out(self) -> int | None:
        return self.target[2] if self.target else None

    @property
    def read_hooks(self) -> str | tuple[str, str]:
        """What the reader gathers: the hook, or (hook, target) so batches are (x, y) pairs."""
        hook = self.hooks[0][0]
        return hook if self.target is None else (hook, self.target[0])

    def describe(self) -> str:
        return f"{self.cfg.store}" + (f", {self.ranks.world_size} ranks" if self.ranks.enabled else "")

    def input_stats(self, state: dict | None) -> dict[str, InputStats]:
        hook = self.hooks[0][0]
        if state is not None:
            return {hook: InputStats(**state["input_stats"])}
        return {hook: _estimate_stats(self.cfg, self.store, self.read_hooks, self.n_train)}

    def run_info(self, key: str, stats: InputStats) -> RunInfo:
        target = self.target or (None, None, None)
        return RunInfo(store=str(Path(self.cfg.store).resolve()), hook=self.hooks[0][1], hook_module=key,
                       context_len=self.store.context_len, prepend_bos=self.store.manifest.get("prepend_bos", True),
                       input_scale=stats.scale, target_hook=target[1], target_module=target[0],
                       target_scale=stats.target_scale)

    def provenance(self) -> dict:
        return {"store_tokens": self.store.n_tokens}

    def batches_from(self, files):
        hooks, cfg = self.read_hooks, self.cfg

        def batches(skip: int) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
            return self.store.batches(hooks, cfg.batch_size, shuffle=True, seed=cfg.seed, split="train", epochs=None,
                                      skip_batches=skip, device=self.device, part=self.part,
                                      dtype=self.store.batch_dtype(hooks, cfg.dtype))
        return batches

    def state(self) -> None:
        return None


def _checkpoint_to_resume(cfg: TrainConfig, out: Path, resume: bool,
                          ranks: Distributed = SINGLE) -> tuple[dict | None, dict | None]:
    """The checkpoint a `--resume` continues (checked against `cfg`), or (None, None) for a fresh
    run, refused when `out` already holds one."""
    checkpoint = find_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise SaeKitError(f"--resume: {out} holds no checkpoint to continue from; start without --resume")
    if not resume and ((out / CONFIG_FILE).exists() or (out / SWEEP_FILE).exists() or find_checkpoint(out)):
        raise SaeKitError(f"{out} already holds a run; continue it with --resume or choose another --out")
    ranks.barrier()  # every rank has looked before rank 0 writes anything
    if checkpoint is None:
        return None, None
    state, files = load_checkpoint(checkpoint, ranks)
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


def build_slots(cfg: TrainConfig, source, out: Path, device: torch.device, stats: dict[str, InputStats],
                ranks: Distributed = SINGLE) -> list[Slot]:
    """One initialised model per spec and hook, each with its run directory (RUN itself, or RUN/<name>)
    and, under torchrun, how it is spread over the ranks."""
    window_steps = math.ceil(cfg.dead_window_tokens / cfg.batch_size)
    slots = []
    for key, requested, d_in in source.hooks:
        metadata = source.run_info(key, stats[key]).to_metadata(source.model_identity)
        target = getattr(source, "target", None)
        specs = model_specs(cfg, d_in, hook=requested, metadata=metadata, d_out=target[2] if target else None,
                            target_hook=target[1] if target else None)
        if len(source.hooks) > 1:  # one model per hook: RUN/resid.3; several: RUN/resid.3-sae-l1_5
            specs = [ModelSpec(requested if len(specs) == 1 else f"{requested}-{s.name}", s.cfg) for s in specs]
        for spec in specs:
            slot = make_slot(spec, cfg, device, window_steps, stats[key])
            slot.key, slot.stats = key, stats[key]
            if ranks.enabled:
                _spread(slot, cfg, ranks, device, window_steps)
            slots.append(slot)
    for slot in slots:
        slot.run_dir = out / slot.name if len(slots) > 1 else out
        if ranks.is_main:
            slot.run_dir.mkdir(parents=True, exist_ok=True)
    return slots


def _spread(slot: Slot, cfg: TrainConfig, ranks: Distributed, device: torch.device, window_steps: int) -> None:
    """Give a slot its `parallel`: data parallel, or (shard_latents) this rank's slice of the latents."""
    if not cfg.shard_latents:
        slot.parallel = DataParallel(ranks)
        slot.parallel.prepare(slot)
        return
    if slot.optimizer is None:
        raise SaeKitError(f"--shard-latents trains sparse dictionaries only; drop {slot.spec.cfg.arch} from --arch")
    slot.parallel = LatentSharding(ranks, slot.spec.cfg)
    slot.model = slot.parallel.local_model(slot.model)
    slot.optimizer = adam(slot.model, cfg)
    if slot.tracker is not None:
        slot.tracker = DeadLatentTracker(slot.model.d_sae, window_steps, device=device)


def _restore_or_start(cfg: TrainConfig, slots: list[Slot], state: dict | None, files: dict | None,
                      ranks: Distributed = SINGLE) -> int:
    """Load the checkpoint into the slots (returns its step), or start fresh at step 0."""
    if state is None:
        for slot in slots if ranks.is_main else ():  # a fresh run: drop metrics of an earlier attempt
            (slot.run_dir / METRICS_FILE).unlink(missing_ok=True)
        torch.manual_seed(cfg.seed + 1_000_003 * ranks.rank)  # the training stream (noise, VAE samples, resampling)
        return 0
    saved_names = [m["name"] for m in state["models"]]
    if saved_names != [slot.name for slot in slots]:
        raise SaeKitError(f"the checkpoint holds models {saved_names}, the config asks for {[s.name for s in slots]}")
    start_step = restore_checkpoint(slots, files, state, ranks)
    for slot in slots if ranks.is_main else ():
        truncate_metrics(slot.run_dir / METRICS_FILE, start_step)
    return start_step


def _print_start(cfg, slots, source, device, start_step, stats, derived) -> None:
    n_steps = source.n_steps
    hooks = ", ".join(f"{requested} (d_in={d})" for _, requested, d in source.hooks)
    if source.target is not None:
        hooks += f" -> {source.target[1]} (d_out={source.d_out})"
    print(f"sae-kit train: {len(slots)} model(s) on {hooks} from {source.describe()}: "
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
    for key, requested, _ in source.hooks:
        print(f"  {'input_scale':<24} {stats[key].scale:.6g}  (E‖x‖ = √d_in on {stats[key].n_tokens} tokens of "
              f"{requested})", file=sys.stderr)
        if stats[key].target_scale is not None:
            print(f"  {'target_scale':<24} {stats[key].target_scale:.6g}  (E‖y‖ = √d_out)", file=sys.stderr)
    for slot in slots:
        model, spec_cfg = slot.model, slot.spec.cfg
        swept = (f" {model.sweep_label}={getattr(spec_cfg, model.sweep_field):g}" if model.sweep_field else "")
        print(f"  model {slot.name}: d_sae={spec_cfg.d_sae} decoder_norm={spec_cfg.decoder_norm}{swept}", file=sys.stderr)


def save_models(cfg: TrainConfig, slots: list[Slot], out: Path, provenance: dict, derived: tuple[Derived, ...] = (),
                ranks: Distributed = SINGLE) -> None:
    """Save every model (its input and target scales folded in; sharded ones gathered whole) and,
    for several, RUN/sweep.json listing them. config.json's "training" is the resolved config;
    "derived" says which settings were derived, and how. Rank 0 writes."""
    for slot in slots:
        full = getattr(slot.parallel, "full_model", None)
        model = full(slot) if full else slot.model
        if not ranks.is_main:
            continue
        model.eval()
        model.fold_scales_(slot.stats.scale, slot.stats.target_scale)
        meta = slot.spec.cfg.metadata
        model.save(slot.run_dir, extra={"name": slot.name, "training": cfg.to_dict(),
                                        "provenance": {**meta, **provenance},
                                        "derived": [dataclasses.asdict(d) for d in derived],
                                        "final_train_metrics": slot.last_metrics})
    if len(slots) > 1 and ranks.is_main:
        runs = [{"name": s.name, "path": s.name, "arch": s.spec.cfg.arch, "d_sae": s.spec.cfg.d_sae,
                 "l1_coefficient": s.spec.cfg.l1_coefficient if s.model.sweep_field == "l1_coefficient" else None,
                 "k": s.spec.cfg.k, "hook": s.spec.cfg.hook} for s in slots]
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
