"""Training: one flat loop over shuffled store batches, one or several models per batch.

    for each step:  lr, λ  ->  forward  ->  loss  ->  backward  ->  decoder constraint  ->  clip
                    ->  Adam step  ->  dead-latent tracking  ->  (every N) log  ->  (every M) checkpoint

`train(cfg)` opens the store, estimates the input scale, runs `fit` and saves every model
(input scale folded in) with its metrics. `fit` is the loop itself and takes any batch source,
so the synthetic benchmark trains with exactly this code. The recipe (defaults, schedules) is
in `sae_kit.recipe`; checkpoint files in `sae_kit.checkpoint`; CLI in `sae_kit.train_cli`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_kit import __version__, losses
from sae_kit.autoencoders import SWEEP_FILE, Autoencoder, CovarianceAccumulator, build_autoencoder
from sae_kit.autoencoders.base import CONFIG_FILE
from sae_kit.checkpoint import find_checkpoint, load_checkpoint, restore_checkpoint, write_checkpoint
from sae_kit.dead_latents import DeadLatentTracker, resample_dead_latents_
from sae_kit.errors import SaeKitError
from sae_kit.recipe import InputStats, ModelSpec, TrainConfig, estimate_input_stats, l1_scale_at, lr_at, model_specs

METRICS_FILE = "metrics.jsonl"
BatchSource = Callable[[int], Iterator[torch.Tensor]]
"""skip_batches -> iterator of raw activation batches [batch_size, d_in], deterministic, endless."""


@dataclass
class Slot:
    """The mutable training state of one model of the run."""

    spec: ModelSpec
    model: Autoencoder
    optimizer: torch.optim.Optimizer | None
    """None for PCA, which is fitted from `covariance` at the end."""
    tracker: DeadLatentTracker | None
    """None for the VAE and PCA (their latents have no 'firing')."""
    covariance: CovarianceAccumulator | None = None
    run_dir: Path | None = None
    first_bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))
    """Step of the first non-finite loss, -1 while all are finite (kept on the device: no sync)."""
    last_metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unit_decoder(self) -> bool:
        return self.spec.cfg.decoder_norm == "unit" and self.spec.cfg.arch in ("sae", "topk")


def make_slot(spec: ModelSpec, cfg: TrainConfig, device: torch.device, window_steps: int,
              stats: InputStats) -> Slot:
    """Build and initialise one model (every model of a run starts from the seed's init)."""
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(spec.cfg)
    if spec.cfg.arch != "pca" and cfg.b_dec_init != "zeros":
        origin = stats.mean if cfg.b_dec_init == "mean" else stats.geometric_median
        with torch.no_grad():
            model.b_dec.copy_(torch.tensor(origin) * stats.scale)
    model.to(device).train()
    if spec.cfg.arch == "pca":
        return Slot(spec, model, None, None, covariance=CovarianceAccumulator(spec.cfg.d_in))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    tracker = None if spec.cfg.arch == "vae" else DeadLatentTracker(spec.cfg.d_sae, window_steps, device=device)
    return Slot(spec, model, optimizer, tracker, first_bad_step=torch.tensor(-1, device=device))


def fit(
    cfg: TrainConfig,
    slots: list[Slot],
    batches_from: BatchSource,
    n_steps: int,
    stats: InputStats,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    start_step: int = 0,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> bool:
    """Train `slots` for steps start_step..n_steps-1 on batches_from(start_step). Returns True when
    finished, False when stopped early by `stop_after_steps` (as a kill would, after the last
    checkpoint). Writes metrics.jsonl per slot and checkpoints under checkpoint_dir (if given)."""
    B = cfg.batch_size
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16"
                else contextlib.nullcontext())
    checkpoint_steps = max(1, cfg.checkpoint_every_tokens // B) if cfg.checkpoint_every_tokens else None
    resample_steps = max(1, cfg.resample_every_tokens // B) if cfg.resample_every_tokens else None
    bar = tqdm(total=n_steps * B, initial=start_step * B, unit="tok", unit_scale=True, desc="train",
               disable=not progress, dynamic_ncols=True, file=sys.stderr)
    interval_start, interval_step = time.perf_counter(), start_step
    batches = batches_from(start_step)
    try:
        for step in range(start_step, n_steps):
            x = next(batches, None)
            if x is None:
                raise SaeKitError(f"the batch source ran dry at step {step}; the store reader must cycle (epochs=None)")
            x = x.to(device, non_blocking=True) * stats.scale  # E‖x‖ = √d_in (Anthropic, April 2024)
            lr, l1_scale = lr_at(step, n_steps, cfg), l1_scale_at(step, n_steps, cfg)
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == n_steps
            for slot in slots:
                if slot.covariance is not None:  # PCA: accumulate moments, fit at the end
                    slot.covariance.update(x)
                    continue
                for group in slot.optimizer.param_groups:
                    group["lr"] = lr
                dead = slot.tracker.dead_mask(step) if slot.spec.cfg.arch == "topk" and slot.tracker else None
                with autocast:
                    out = slot.model(x, l1_coefficient=slot.spec.cfg.l1_coefficient * l1_scale, dead_mask=dead)
                slot.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                if slot.unit_decoder:
                    slot.model.remove_parallel_decoder_grad_()
                grad_norm = (torch.nn.utils.clip_grad_norm_(slot.model.parameters(), cfg.max_grad_norm)
                             if cfg.max_grad_norm > 0 else None)
                slot.optimizer.step()
                if slot.unit_decoder:
                    slot.model.normalize_decoder_()
                if slot.tracker is not None:
                    slot.tracker.update(out.z, step)
                # remember the first non-finite step without a device sync; checked when logging
                bad = ~torch.isfinite(out.loss.detach()) & (slot.first_bad_step < 0)
                slot.first_bad_step = torch.where(bad, step, slot.first_bad_step)
                if log_now:
                    slot.last_metrics = step_metrics(slot, x, out, step, lr, l1_scale, grad_norm, stats.scale, B)
            if resample_steps and (step + 1) % resample_steps == 0:
                resample(slots, x, step, checkpoint_dir is not None)
            if log_now:
                now = time.perf_counter()
                tokens_per_s = (step + 1 - interval_step) * B / max(now - interval_start, 1e-9)
                interval_start, interval_step = now, step + 1
                check_finite(slots, checkpoint_dir)
                write_metrics(slots, step, lr, tokens_per_s, bar)
            bar.update(B)
            if checkpoint_dir is not None and checkpoint_steps and (step + 1) % checkpoint_steps == 0 and step + 1 < n_steps:
                check_finite(slots, checkpoint_dir)
                write_checkpoint(checkpoint_dir, cfg, slots, step + 1, n_steps, stats)
            if stop_after_steps is not None and step + 1 >= stop_after_steps and step + 1 < n_steps:
                return False
        check_finite(slots, checkpoint_dir)
        for slot in slots:
            if slot.covariance is not None:
                acc = slot.covariance
                slot.model.fit_moments(acc.n, acc.sum_x, acc.sum_outer)
        return True
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        bar.close()


@torch.no_grad()
def step_metrics(slot: Slot, x, out, step, lr, l1_scale, grad_norm, scale, batch_size) -> dict:
    """Metrics of one model on the current batch (x in normalised units; MSE reported in raw units)."""
    x_hat = out.x_hat.float()
    record = {
        "step": step + 1,
        "tokens": (step + 1) * batch_size,
        "loss": float(out.loss),
        **{f"loss_{k}": float(v) for k, v in out.losses.items()},
        "mse": float(losses.mse(x, x_hat)) / scale**2,
        "fvu": float(losses.fvu(x, x_hat)),
        "l0": float(losses.l0(out.z)),
        "l1": float(losses.l1(out.z.float())),
        "lr": lr,
    }
    if slot.spec.cfg.arch == "sae":
        record["l1_coefficient"] = slot.spec.cfg.l1_coefficient * l1_scale
    if slot.tracker is not None:
        record["dead_fraction"] = float(slot.tracker.dead_mask(step + 1).float().mean())
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    return record


def write_metrics(slots: list[Slot], step: int, lr: float, tokens_per_s: float, bar) -> None:
    """Append each model's metrics line (with the interval's tokens/s) and update the bar."""
    shown = []
    for slot in slots:
        if slot.covariance is not None:
            continue
        slot.last_metrics["tokens_per_s"] = round(tokens_per_s, 1)
        if slot.run_dir is not None:
            with open(slot.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(slot.last_metrics) + "\n")
        m = slot.last_metrics
        shown.append(f"{slot.name} fvu={m['fvu']:.3f} L0={m['l0']:.1f}" if len(slots) > 1
                     else f"fvu={m['fvu']:.3f} L0={m['l0']:.1f}")
    if shown:
        bar.set_postfix_str(" | ".join(shown[:3]) + (" …" if len(shown) > 3 else ""), refresh=False)


def resample(slots: list[Slot], x: torch.Tensor, step: int, verbose: bool) -> None:
    """Anthropic 2023 resampling of the dead latents of every ReLU model (topk has AuxK instead)."""
    for slot in slots:
        if slot.spec.cfg.arch not in ("sae", "ae", "dae") or slot.tracker is None:
            continue
        dead = slot.tracker.dead_mask(step + 1)
        n = resample_dead_latents_(slot.model, slot.optimizer, dead, x)
        if n:
            slot.tracker.revive(torch.nonzero(dead).flatten(), step)
            if slot.run_dir is not None:
                with open(slot.run_dir / METRICS_FILE, "a") as handle:
                    handle.write(json.dumps({"step": step + 1, "event": "resample", "n_resampled": n}) + "\n")
            if verbose:
                tqdm.write(f"step {step + 1}: resampled {n} dead latents of {slot.name}", file=sys.stderr)


def check_finite(slots: list[Slot], checkpoint_dir: Path | None) -> None:
    """Raise SaeKitError naming the first step whose loss was not finite (the checkpoint on disk is
    from before it and is kept)."""
    for slot in slots:
        bad = int(slot.first_bad_step)
        if bad >= 0:
            kept = find_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
            where = (f"the last good checkpoint ({json.loads((kept / 'state.json').read_text())['step']} steps) "
                     f"is kept in {kept}" if kept else "no checkpoint had been written yet")
            raise SaeKitError(
                f"step {bad + 1}: the loss of {slot.name} is not finite; {where}. Lower --lr, train in "
                "--dtype float32, or check the store for non-finite activations (sae-kit verify)"
            )


# ----------------------------------------------------------------------------- train from a store


def train(cfg: TrainConfig, *, resume: bool = False, stop_after_steps: int | None = None,
          progress: bool = True) -> list[Path]:
    """Train the models `cfg` asks for on an activation store; returns their run directories.

    One model: RUN holds it. Several (`archs`, `l1_coefficients`, `ks`): one sub-directory
    per model (RUN/sae-l1_5, RUN/topk-k_32, RUN/pca …) and RUN/sweep.json listing them; they
    all see the same batches in one pass over the data. `resume` continues from
    RUN/checkpoint and reaches the same weights as an uninterrupted run. `stop_after_steps`
    stops early as a kill would (for tests of resume); nothing final is written then.
    """
    from sae_kit.models import choose_device
    from sae_kit.store import ActivationStore

    out = Path(cfg.out)
    checkpoint = find_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise SaeKitError(f"--resume: {out} holds no checkpoint to continue from; start without --resume")
    if not resume and ((out / CONFIG_FILE).exists() or (out / SWEEP_FILE).exists() or find_checkpoint(out)):
        raise SaeKitError(f"{out} already holds a run; continue it with --resume or choose another --out")
    state, files = load_checkpoint(checkpoint) if checkpoint else (None, None)
    if state is not None:
        check_resume_matches(TrainConfig.from_dict(state["training"]), cfg)
        if state["step"] >= state["n_steps"]:
            raise SaeKitError(f"{out}: the checkpoint is at the last step already; nothing to resume")

    store = ActivationStore(cfg.store)
    hook = store.resolve_hook_name(cfg.hook)
    d_in = store.d_in(hook)
    device = choose_device(cfg.device)
    n_train = store.count("train")
    n_steps = (cfg.tokens or n_train) // cfg.batch_size
    if n_steps < 1:
        raise SaeKitError(f"{cfg.tokens or n_train} tokens make no full batch of {cfg.batch_size}; "
                          "lower --batch-size or raise --tokens")
    if state is not None:
        stats = InputStats(**state["input_stats"])
    else:
        reader = store.batches(hook, min(cfg.batch_size, n_train), seed=cfg.seed + 1, epochs=None)
        with contextlib.closing(reader):
            stats = estimate_input_stats(reader, cfg.norm_estimation_tokens, cfg.normalize_inputs,
                                         cfg.b_dec_init == "geometric_median")
    manifest_model = store.manifest.get("model", {})
    metadata = {"store": str(Path(cfg.store).resolve()), "hook_module": hook,
                "hook_requested": store.hooks[hook].get("requested", hook), "model": manifest_model,
                "context_len": store.context_len, "prepend_bos": store.manifest.get("prepend_bos", True),
                "input_scale_folded": stats.scale}
    specs = model_specs(cfg, d_in, hook=store.hooks[hook].get("requested") or hook, metadata=metadata)
    window_steps = math.ceil(cfg.dead_window_tokens / cfg.batch_size)
    slots = [make_slot(spec, cfg, device, window_steps, stats) for spec in specs]
    several = len(slots) > 1
    for slot in slots:
        slot.run_dir = out / slot.name if several else out
        slot.run_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if state is not None:
        saved_names = [m["name"] for m in state["models"]]
        if saved_names != [slot.name for slot in slots]:
            raise SaeKitError(f"the checkpoint holds models {saved_names}, the config asks for {[s.name for s in slots]}")
        start_step = restore_checkpoint(slots, files, state)
        for slot in slots:
            truncate_metrics(slot.run_dir / METRICS_FILE, start_step)
    else:
        for slot in slots:  # a fresh run: drop metrics of an earlier attempt killed before its first checkpoint
            (slot.run_dir / METRICS_FILE).unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)  # the training stream (noise, VAE samples, resampling)

    print(f"sae-kit train: {len(slots)} model(s) on {hook} (d_in={d_in}) of {cfg.store}: "
          f"{n_steps} steps × {cfg.batch_size} = {n_steps * cfg.batch_size:,} tokens on {device}"
          + (f", resuming at step {start_step}" if start_step else ""), file=sys.stderr)
    print("training config:\n" + cfg.describe(), file=sys.stderr)
    print(f"  {'input_scale':<24} {stats.scale:.6g}  (E‖x‖ = √d_in on {stats.n_tokens} tokens)", file=sys.stderr)
    for spec in specs:
        print(f"  model {spec.name}: d_sae={spec.cfg.d_sae} decoder_norm={spec.cfg.decoder_norm}"
              + (f" λ={spec.cfg.l1_coefficient:g}" if spec.cfg.arch == "sae" else "")
              + (f" k={spec.cfg.k}" if spec.cfg.arch == "topk" else ""), file=sys.stderr)

    def batches_from(skip: int) -> Iterator[torch.Tensor]:
        return store.batches(hook, cfg.batch_size, shuffle=True, seed=cfg.seed, split="train", epochs=None,
                             skip_batches=skip, device=device)

    finished = fit(cfg, slots, batches_from, n_steps, stats, device=device, checkpoint_dir=out,
                   start_step=start_step, stop_after_steps=stop_after_steps, progress=progress)
    if not finished:  # stopped as a kill would: only the last periodic checkpoint remains
        return []
    provenance = {**metadata, "tokens_trained": n_steps * cfg.batch_size, "steps": n_steps,
                  "store_tokens": store.n_tokens, "sae_kit_version": __version__,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for slot in slots:
        slot.model.eval()
        slot.model.fold_input_scale_(stats.scale)
        slot.model.save(slot.run_dir, extra={"name": slot.name, "training": cfg.to_dict(), "provenance": provenance,
                                             "final_train_metrics": slot.last_metrics})
    if several:
        runs = [{"name": s.name, "path": s.name, "arch": s.spec.cfg.arch, "d_sae": s.spec.cfg.d_sae,
                 "l1_coefficient": s.spec.cfg.l1_coefficient if s.spec.cfg.arch == "sae" else None,
                 "k": s.spec.cfg.k} for s in slots]
        (out / SWEEP_FILE).write_text(json.dumps({"format": "sae-kit-sweep", "runs": runs,
                                                  "training": cfg.to_dict()}, indent=2) + "\n")
    print(summary_table(slots), file=sys.stderr)
    return [slot.run_dir for slot in slots]


RESUME_MAY_CHANGE = ("device", "log_every", "checkpoint_every_tokens")


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
    path.write_text("".join(line + "\n" for line in kept))


def summary_table(slots: list[Slot]) -> str:
    """Final training metrics of every model (on the last batch), as a small text table."""
    rows = [f"{'model':<16} {'fvu':>7} {'L0':>8} {'dead %':>7} {'tok/s':>8}"]
    for slot in slots:
        m = slot.last_metrics
        if not m:
            rows.append(f"{slot.name:<16} {'(fitted in closed form)':>33}")
            continue
        dead = f"{100 * m['dead_fraction']:.1f}" if "dead_fraction" in m else "-"
        rows.append(f"{slot.name:<16} {m['fvu']:>7.4f} {m['l0']:>8.1f} {dead:>7} {m.get('tokens_per_s', 0):>8.0f}")
    return "\n".join(rows)


def add_cli(subparsers) -> None:
    """`sae-kit train` (see sae_kit.train_cli)."""
    from sae_kit.train_cli import add_train_cli

    add_train_cli(subparsers)
