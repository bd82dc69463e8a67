"""The training loop: one flat loop over batches, one or several models per batch.

    for each step:  lr, λ  ->  training loss  ->  backward  ->  decoder constraint  ->  clip
                    ->  Adam step  ->  dead-latent tracking  ->  (every N) log  ->  (every M) checkpoint

`fit` is the loop itself and takes any batch source, so training from a store
(`sae_kit.training.run.train`) and the synthetic benchmark train with exactly this code. What
differs between architectures comes from the model's class (`sae_kit.autoencoders.base`): its
training loss, whether it is fitted in closed form, how its dead latents are revived. The recipe
(defaults, schedules) is in `sae_kit.training.recipe`; checkpoint files in
`sae_kit.training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_kit import faults
from sae_kit.autoencoders import Autoencoder, ForwardOutput, TrainingState, build_autoencoder
from sae_kit.autoencoders.sparse import as_dense
from sae_kit.errors import SaeKitError
from sae_kit.evaluation import metrics
from sae_kit.training.checkpoint import find_checkpoint, write_checkpoint
from sae_kit.training.dead_latents import DeadLatentTracker, resample_dead_latents_
from sae_kit.training.distributed import SINGLE, AgreedError, Distributed
from sae_kit.training.input_stats import InputStats
from sae_kit.training.recipe import TrainConfig, l1_scale_at, lr_at
from sae_kit.training.specs import ModelSpec

METRICS_FILE = "metrics.jsonl"
BatchSource = Callable[[int], Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]]]
"""skip_batches -> iterator of raw activation batches [batch_size, d_in], of pairs
(x [batch_size, d_in], y [batch_size, d_out]) for models with a target (transcoders), or of
{key: [batch_size, d]} for models of several hook points, each slot reading its `key`;
deterministic, endless."""


@dataclass
class Slot:
    """The mutable training state of one model of the run."""

    spec: ModelSpec
    model: Autoencoder
    optimizer: torch.optim.Optimizer | None
    """None for models fitted in closed form (PCA), which accumulate `covariance` instead."""
    tracker: DeadLatentTracker | None
    """None for models whose latents do not 'fire' (VAE, PCA)."""
    covariance: object | None = None
    """The moments a closed-form model accumulates (`model.fitter()`); fitted at the end."""
    run_dir: Path | None = None
    first_bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))
    """Step of the first non-finite loss, -1 while all are finite (kept on the device: no sync)."""
    last_metrics: dict = field(default_factory=dict)
    key: str | None = None
    """The entry of a dict batch this model trains on (its hook); None when batches are tensors."""
    stats: InputStats | None = None
    """This model's input statistics, where slots of one run read different hooks (else fit's)."""
    parallel: object | None = None
    """How the model is spread over ranks (`training.distributed.DataParallel`,
    `training.sharding.LatentSharding`); None in one process."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unit_decoder(self) -> bool:
        return self.spec.cfg.decoder_norm == "unit" and not self.model.fitted_in_closed_form


def make_slot(spec: ModelSpec, cfg: TrainConfig, device: torch.device, window_steps: int,
              stats: InputStats) -> Slot:
    """Build and initialise one model (every model of a run starts from the seed's init)."""
    if not cfg.resolved:
        raise ValueError("make_slot needs a resolved TrainConfig: call sae_kit.training.derive.resolve first")
    torch.manual_seed(cfg.seed)
    model = build_autoencoder(spec.cfg)
    model.kernels = cfg.kernels
    if model.fitted_in_closed_form:
        return Slot(spec, model.to(device).train(), None, None, covariance=model.fitter())
    if cfg.b_dec_init != "zeros":
        origin = stats.decoder_origin(cfg.b_dec_init)  # b_dec is in the output's space (a transcoder's target)
        with torch.no_grad():
            model.b_dec.copy_(torch.tensor(origin) * stats.output_scale)
    model.to(device).train()
    optimizer = adam(model, cfg)
    tracker = DeadLatentTracker(spec.cfg.d_sae, window_steps, device=device) if model.latents_fire else None
    return Slot(spec, model, optimizer, tracker, first_bad_step=torch.tensor(-1, device=device))


def adam(model, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the model's parameter groups (β₁, β₂ from cfg; Anthropic, April 2024), as torch's
    fused single-kernel form where this torch and device have one (CPU from torch 2.4, CUDA), else
    torch's default form. The same update rule either way; fused is one pass over each parameter
    instead of about ten (measured here, 2 × 18,432 × 576 parameters: 16 ms against 90 ms a step)."""
    kwargs = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2)}
    try:
        return torch.optim.Adam(model.optimizer_groups(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(model.optimizer_groups(), **kwargs)


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
    checkpoint_extra: dict | None = None,
    ranks: Distributed = SINGLE,
    source_state: Callable[[], tuple[dict, dict]] | None = None,
) -> bool:
    """Train `slots` for steps start_step..n_steps-1 on batches_from(start_step). Returns True when
    finished, False when stopped early by `stop_after_steps` (as a kill would, after the last
    checkpoint). Writes metrics.jsonl per slot and checkpoints under checkpoint_dir (if given),
    with `checkpoint_extra` added to their state.json. `cfg` must be resolved (`derive.resolve`).
    Batches of pairs (x, y) train the models to predict y from x (transcoders).

    Under torchrun (`ranks`), every rank runs this loop in step: each slot's `parallel` averages
    gradients (data parallel) or holds a slice of the latents; a batch that fails on one rank
    fails on all; rank 0 writes metrics and checkpoints. `source_state` returns the batch
    source's own resume state (an on-the-fly buffer) to store in each checkpoint."""
    if not cfg.resolved:
        raise ValueError("fit needs a resolved TrainConfig (batch_size, lr, b_dec_init set): call "
                         "sae_kit.training.derive.resolve first")
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
            inputs = scaled_inputs(next_batch(batches, step, ranks), slots, stats, device)
            lr, l1_scale = lr_at(step, n_steps, cfg), l1_scale_at(step, n_steps, cfg)
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == n_steps
            for slot in slots:
                x, y = inputs[slot.key]
                state = TrainingState(sparsity_scale=l1_scale, step=step)
                out, grad_norm = train_step(slot, x, state, lr, cfg.max_grad_norm, autocast, target=y)
                if log_now and out is not None:
                    slot.last_metrics = step_metrics(slot, x if y is None else y, out, state, lr, grad_norm,
                                                     (slot.stats or stats).output_scale, B)
            if resample_steps and (step + 1) % resample_steps == 0:
                resample(slots, inputs, step, checkpoint_dir is not None, ranks)
            if log_now:
                now = time.perf_counter()
                tokens_per_s = (step + 1 - interval_step) * B / max(now - interval_start, 1e-9)
                interval_start, interval_step = now, step + 1
                check_finite(slots, checkpoint_dir, ranks)
                write_metrics(slots, step, lr, tokens_per_s, bar, ranks.is_main)
            bar.update(B)
            if checkpoint_dir is not None and checkpoint_steps and (step + 1) % checkpoint_steps == 0 and step + 1 < n_steps:
                check_finite(slots, checkpoint_dir, ranks)
                write_checkpoint(checkpoint_dir, cfg, slots, step + 1, n_steps, stats, ranks=ranks,
                                 source=source_state() if source_state else None, extra=checkpoint_extra)
            if stop_after_steps is not None and step + 1 >= stop_after_steps and step + 1 < n_steps:
                return False
        check_finite(slots, checkpoint_dir, ranks)
        for slot in slots:
            if slot.covariance is not None:
                if slot.parallel is not None:
                    slot.parallel.reduce_moments(slot.covariance, keep_on_all=True)
                slot.model.fit_from(slot.covariance)
        return True
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        bar.close()


def next_batch(batches, step: int, ranks: Distributed):
    """The next batch of the source; under torchrun a source failing on one rank fails on all
    (the others would otherwise wait for it in the next collective)."""
    failure = None
    try:
        batch = next(batches, None)
        if batch is None:
            failure = f"the batch source ran dry at step {step}; the store reader must cycle (epochs=None)"
    except Exception as err:
        if not ranks.enabled:
            raise
        batch, failure = None, (str(err).strip().splitlines() or [type(err).__name__])[0]
    if ranks.enabled:
        ranks.agree(failure)
    elif failure is not None:
        raise SaeKitError(failure)
    return batch


def scaled_inputs(batch, slots: list[Slot], stats: InputStats,
                  device: torch.device) -> dict[str | None, tuple[torch.Tensor, torch.Tensor | None]]:
    """{slot key: (x, y)} on `device`, x times its input scale (E‖x‖ = √d_in, Anthropic April 2024)
    and a transcoder's target y times its own (E‖y‖ = √d_out); y is None for autoencoders.

    Batches keep their dtype: a bfloat16 store read for bfloat16 training (`batch_dtype`) is scaled
    in bfloat16 and goes to autocast as it is (the losses promote to float32 against the model's
    float32 outputs; what runs outside autocast — PCA's moments, resampling, metrics — takes
    float32 copies)."""
    inputs: dict[str | None, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for slot in slots:
        if slot.key not in inputs:
            raw = batch[slot.key] if isinstance(batch, dict) else batch
            x, y = raw if isinstance(raw, tuple) else (raw, None)
            scales = slot.stats or stats
            x = x.to(device, non_blocking=True) * scales.scale
            if y is not None:
                y = y.to(device, non_blocking=True) * scales.output_scale
            inputs[slot.key] = (x, y)
    return inputs


def train_step(slot: Slot, x: torch.Tensor, state: TrainingState, lr: float, max_grad_norm: float,
               autocast, target: torch.Tensor | None = None) -> tuple[ForwardOutput | None, torch.Tensor | None]:
    """One step of one model on x [batch, d_in] (normalised; `target` [batch, d_out] the normalised
    y a transcoder predicts): loss → backward → decoder constraint → clip → Adam → dead-latent
    tracking. Closed-form models only accumulate their moments (returns (None, None)). Returns
    the forward output and the gradient norm."""
    if slot.covariance is not None:  # PCA: accumulate moments, fit at the end
        slot.covariance.update(x.float())
        return None, None
    for group in slot.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if slot.tracker is not None and slot.model.wants_dead_mask():
        state = dataclasses.replace(state, dead_mask=slot.tracker.dead_mask(state.step))
    parallel = slot.parallel
    with autocast:  # a target only when there is one: an SAE's training_loss(x, state) needs no such argument
        if parallel is not None:
            out = parallel.training_loss(slot.model, x, state, target)
        elif target is None:
            out = slot.model.training_loss(x, state)
        else:
            out = slot.model.training_loss(x, state, target=target)
    if faults.triggered("nan-loss", state.step + 1):  # the fault-injection suite's non-finite loss
        out = out._replace(loss=out.loss * float("nan"))
    slot.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    fired = None  # [d_sae] bool for the dead-latent tracker: a sparse path knows it from its pairs
    if slot.tracker is not None:
        fired = out.fired if out.fired is not None else out.z.detach().amax(0) > 0
    if parallel is not None:  # average gradients (and the firing) over ranks
        fired = parallel.sync(slot.model, fired)
    if slot.unit_decoder:
        slot.model.remove_parallel_decoder_grad_()
    if max_grad_norm <= 0:
        grad_norm = None
    elif parallel is not None:
        grad_norm = parallel.clip(slot.model, max_grad_norm)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(slot.model.parameters(), max_grad_norm)
    slot.optimizer.step()
    if slot.unit_decoder:
        slot.model.normalize_decoder_()
    if slot.tracker is not None:
        slot.tracker.mark_fired(fired, state.step)
    # remember the first non-finite step without a device sync; checked when logging
    bad = ~torch.isfinite(out.loss.detach()) & (slot.first_bad_step < 0)
    slot.first_bad_step = torch.where(bad, state.step, slot.first_bad_step)
    return out, grad_norm


@torch.no_grad()
def step_metrics(slot: Slot, x, out, state: TrainingState, lr, grad_norm, scale, batch_size) -> dict:
    """Metrics of one model on the current batch: x is what it reconstructs (a transcoder's target),
    in normalised units, `scale` its normalising constant; MSE is reported in raw units."""
    x, x_hat = x.float(), out.x_hat.float()
    z = as_dense(out.z)  # a sparse path's latents are sparse CSR
    step = state.step
    record = {
        "step": step + 1,
        "tokens": (step + 1) * batch_size,
        "loss": float(out.loss),
        **{f"loss_{k}": float(v) for k, v in out.losses.items()},
        "mse": float(metrics.mse(x, x_hat)) / scale**2,
        "fvu": float(metrics.fvu(x, x_hat)),
        "l0": float(metrics.l0(z)),
        "l1": float(metrics.l1(z.float())),
        "lr": lr,
        **slot.model.schedule_metrics(state),
    }
    if slot.tracker is not None:
        record["dead_fraction"] = float(slot.tracker.dead_mask(step + 1).float().mean())
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    return slot.parallel.combine_metrics(record) if slot.parallel is not None else record


def write_metrics(slots: list[Slot], step: int, lr: float, tokens_per_s: float, bar, write: bool = True) -> None:
    """Append each model's metrics line (with the interval's tokens/s; only where `write`: rank 0)
    and update the bar."""
    shown = []
    for slot in slots:
        if slot.covariance is not None:
            continue
        slot.last_metrics["tokens_per_s"] = round(tokens_per_s, 1)
        if slot.run_dir is not None and write:
            with open(slot.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(slot.last_metrics) + "\n")
        m = slot.last_metrics
        shown.append(f"{slot.name} fvu={m['fvu']:.3f} L0={m['l0']:.1f}" if len(slots) > 1
                     else f"fvu={m['fvu']:.3f} L0={m['l0']:.1f}")
    if shown:
        bar.set_postfix_str(" | ".join(shown[:3]) + (" …" if len(shown) > 3 else ""), refresh=False)


def resample(slots: list[Slot], inputs: dict, step: int, verbose: bool, ranks: Distributed = SINGLE) -> None:
    """Anthropic 2023 resampling of the dead latents of every model whose remedy it is (AuxK
    models revive theirs through their loss instead); `inputs` as `scaled_inputs` returns them
    (a transcoder's y included). Under data parallelism rank 0 resamples on its slice and the
    others take its weights, Adam moments and trackers."""
    for slot in slots:
        if slot.model.dead_latent_remedy != "resample" or slot.tracker is None:
            continue
        dead = slot.tracker.dead_mask(step + 1)
        x, y = inputs[slot.key]
        n = resample_dead_latents_(slot.model, slot.optimizer, dead, x.float(),
                                   target=None if y is None else y.float()) if ranks.is_main else 0
        if slot.parallel is not None:
            n = slot.parallel.share_resampled(slot, n)
        if n:
            slot.tracker.revive(torch.nonzero(dead).flatten(), step)
            if slot.run_dir is not None and ranks.is_main:
                with open(slot.run_dir / METRICS_FILE, "a") as handle:
                    handle.write(json.dumps({"step": step + 1, "event": "resample", "n_resampled": n}) + "\n")
            if verbose:
                tqdm.write(f"step {step + 1}: resampled {n} dead latents of {slot.name}", file=sys.stderr)


def check_finite(slots: list[Slot], checkpoint_dir: Path | None, ranks: Distributed = SINGLE) -> None:
    """Raise SaeKitError naming the first step whose loss was not finite (the checkpoint on disk is
    from before it and is kept). Under torchrun the ranks agree on the first bad (step, rank), so
    every rank raises the same error."""
    for slot in slots:
        bad = int(slot.first_bad_step)
        mine = None if bad < 0 else bad * ranks.world_size + ranks.rank
        first = ranks.first_failure(mine)
        if first is not None:
            bad, rank = divmod(first, ranks.world_size)
            kept = find_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
            where = (f"the last good checkpoint ({json.loads((kept / 'state.json').read_text())['step']} steps) "
                     f"is kept in {kept}" if kept else "no checkpoint had been written yet")
            on_rank = f" on rank {rank}" if ranks.enabled else ""
            error = AgreedError if ranks.enabled else SaeKitError
            raise error(
                f"step {bad + 1}: the loss of {slot.name} is not finite{on_rank}; {where}. Lower --lr, train in "
                "--compute-dtype float32, or check the store for non-finite activations (sae-kit verify)"
            )


def summary_table(slots: list[Slot]) -> str:
    """Final training metrics of every model (on the last batch), as a small text table."""
    w = max([16] + [len(slot.name) for slot in slots])
    rows = [f"{'model':<{w}} {'fvu':>7} {'L0':>8} {'dead %':>7} {'tok/s':>8}"]
    for slot in slots:
        m = slot.last_metrics
        if not m:
            rows.append(f"{slot.name:<{w}} {'(fitted in closed form)':>33}")
            continue
        dead = f"{100 * m['dead_fraction']:.1f}" if "dead_fraction" in m else "-"
        rows.append(f"{slot.name:<{w}} {m['fvu']:>7.4f} {m['l0']:>8.1f} {dead:>7} {m.get('tokens_per_s', 0):>8.0f}")
    return "\n".join(rows)
