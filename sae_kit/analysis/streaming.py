"""Feature analysis: one streaming pass over a store computes, for every feature at once, its
top-k activating tokens, samples from interval bands, density, maximum, mean and histogram,
plus its logit effects. The result is a self-describing directory A::

    A/analysis.json          {"format": "sae-kit-analysis", "run", "store", "hook", "model",
                              "n_tokens", "top_k", "n_quantiles", "hist_bins", ...}
    A/features.safetensors   the per-feature tensors (FeatureAnalysis lists them with shapes)
    A/tokenizer/             a copy of the model's tokenizer (when logit effects were computed)

`analyze(AnalysisConfig(run=..., out=...))` writes it, `load_analysis(A)` reads it,
`select_features(analysis, ...)` picks features worth looking at (both in
`sae_kit.analysis.result`). The streaming statistics are defined in `sae_kit.analysis.stats`,
the logit effects in `sae_kit.analysis.logit_effects`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.analysis.logit_effects import logit_effects
from sae_kit.analysis.result import FORMAT, INFO_FILE, TENSORS_FILE, TOKENIZER_DIR, FeatureAnalysis, load_analysis
from sae_kit.analysis.stats import FeatureStats
from sae_kit.artifacts import atomic_save_tensors, atomic_write_json, finish_output_dir, prepare_output_dir
from sae_kit.autoencoders import RunInfo, load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.models import choose_device, load_model


@dataclass(frozen=True)
class AnalysisConfig(JsonConfig):
    """Everything that defines an analysis pass; saved in analysis.json."""

    nonempty = ('out',)

    run: str | None
    """Autoencoder run directory (config.json + weights.safetensors); None when `analyze` is given a model."""
    out: str
    """Analysis directory to write."""
    store: str | None = None
    """Activation store to analyse; None means the store the run was trained on."""
    hook: str | None = None
    """Hook in the store (module name or alias); None means the run's hook."""
    tokens: int | None = None
    """Analyse at most this many tokens (the first ones in store order); None means all."""
    split: Literal["all", "train", "eval"] = "all"
    """Which contexts of the store to analyse."""
    skip_bos: bool = True
    """Leave out position 0 (BOS), whose huge activations would fill every top-k."""
    top_k: int = 20
    """Top activating tokens kept per feature, and samples kept per interval band."""
    n_quantiles: int = 10
    """Interval bands spaced evenly between 0 and each feature's maximum (Scaling Monosemanticity)."""
    hist_bins: int = 64
    """Histogram bins over [0, R), R the power of two just above the maximum (a power of two ≥ 2 × n_quantiles)."""
    batch_size: int = 4096
    """Tokens encoded at a time."""
    logit_effects: bool = True
    """Compute promoted / suppressed tokens (loads the language model named in the store)."""
    logit_top: int = 10
    """Promoted and suppressed tokens kept per feature."""
    device: str | None = None
    """Device for encoding (default: CUDA if present, else CPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("top_k", "n_quantiles", "batch_size", "logit_top"):
            if getattr(self, name) < 1:
                flag = {"top_k": "examples", "n_quantiles": "quantiles"}.get(name, name).replace("_", "-")
                raise SaeKitError(f"--{flag} must be at least 1 (got {getattr(self, name)})")
        if self.tokens is not None and self.tokens < 1:
            raise SaeKitError(f"--tokens must be positive (got {self.tokens})")
        if self.split not in ("all", "train", "eval"):
            raise SaeKitError(f"split must be 'all', 'train' or 'eval' (got {self.split!r})")
        if self.hist_bins < 2 * self.n_quantiles or self.hist_bins & (self.hist_bins - 1):
            raise SaeKitError(f"--hist-bins must be a power of two and at least 2 × quantiles = {2 * self.n_quantiles} "
                              f"(got {self.hist_bins})")


# ----------------------------------------------------------------------------- streaming


def token_batches(
    store: ActivationStore, hook: str, *, batch_size: int = 4096, split: str = "all", skip_bos: bool = True,
    max_tokens: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stored activations in store order: (x [b, d_in] float32, global index [b] int64) batches.

    Never straddles a shard; stops after `max_tokens` tokens."""
    remaining = max_tokens if max_tokens is not None else float("inf")
    for chunk in store.iter_chunks(hook, split=split, skip_bos=skip_bos):
        for start in range(0, chunk.acts.shape[0], batch_size):
            if remaining <= 0:
                return
            stop = start + int(min(batch_size, remaining))
            x, index = chunk.acts[start:stop], chunk.index[start:stop]
            remaining -= x.shape[0]
            yield x, index


@torch.no_grad()
def stream_feature_stats(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], encode: Callable[[torch.Tensor], torch.Tensor], d_sae: int,
    *, top_k: int = 20, n_quantiles: int = 10, hist_bins: int = 64, device=None, total: int | None = None,
    overlap: bool = True, progress: bool = True,
) -> FeatureStats:
    """Encode every batch once and update `FeatureStats` for all features.

    batches: (x [b, d_in], index [b]) in increasing index; encode: x [b, d_in] -> z [b, d_sae]
    on `device` (any callable: an autoencoder's `encode`, or a test's hand-built one).
    overlap (CPU): the bookkeeping of batch i runs on a worker thread while batch i+1 is
    encoded, so it costs little beyond the encoder (the results are identical)."""
    device = torch.device(device or "cpu")
    stats = FeatureStats(d_sae, top_k, n_quantiles, hist_bins, device=device)
    worker = _UpdateWorker(stats) if overlap and device.type == "cpu" else None
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="analyze", disable=not progress, dynamic_ncols=True)
    try:
        for x, index in batches:
            z = encode(x.to(device, non_blocking=True))
            if z.shape != (x.shape[0], d_sae):
                raise SaeKitError(f"the encoder returned shape {tuple(z.shape)} for {x.shape[0]} tokens; "
                                  f"expected [{x.shape[0]}, {d_sae}]")
            if worker:
                worker.put(z, index)
            else:
                stats.update(z, index)
            bar.update(x.shape[0])
    finally:
        if worker:
            worker.close()
        bar.close()
    return stats


class _UpdateWorker:
    """Applies `stats.update` to queued batches on one background thread, in order. torch ops
    release the GIL, so this overlaps the caller's next encode. The worker uses one intra-op
    thread (a per-thread setting: the caller's matrix products keep theirs)."""

    def __init__(self, stats: FeatureStats, depth: int = 1):
        self.stats = stats
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="sae-kit-analysis")
        self.thread.start()

    def _run(self) -> None:
        torch.set_num_threads(1)
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.stats.update(*item)
                except BaseException as err:  # handed to the caller
                    self.error = err

    def put(self, z: torch.Tensor, index: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((z, index))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------------------- the pass


def analyze(cfg: AnalysisConfig, *, autoencoder=None, lm=None, overwrite: bool = False,
            progress: bool = True) -> FeatureAnalysis:
    """Run the analysis described by `cfg` and write it to `cfg.out`; returns it loaded.

    autoencoder: an already loaded model (else loaded from cfg.run with `load_autoencoder`);
    lm: an already loaded `LoadedModel` for the logit effects (else the store's model is loaded);
    overwrite: replace an existing analysis in cfg.out.
    """
    out = Path(cfg.out)
    prepare_output_dir(out, INFO_FILE, "an analysis", overwrite, clear=(TOKENIZER_DIR,))
    device = choose_device(cfg.device)
    if autoencoder is None:
        if cfg.run is None:
            raise SaeKitError("give a run directory (--run) or an autoencoder")
        autoencoder = load_autoencoder(cfg.run, device=device)
    autoencoder = autoencoder.to(device).eval()
    store, hook = _store_and_hook(cfg, autoencoder)
    available = store.count(cfg.split, skip_bos=cfg.skip_bos)
    total = min(available, cfg.tokens) if cfg.tokens else available
    if total == 0:
        raise SaeKitError(f"the {cfg.split} split of {store.path} holds no tokens to analyse")

    started = time.perf_counter()
    batches = token_batches(store, hook, batch_size=cfg.batch_size, split=cfg.split, skip_bos=cfg.skip_bos,
                            max_tokens=cfg.tokens)
    stats = stream_feature_stats(batches, autoencoder.encode, autoencoder.d_sae, top_k=cfg.top_k,
                                 n_quantiles=cfg.n_quantiles, hist_bins=cfg.hist_bins, device=device, total=total,
                                 progress=progress)
    tensors = stats.finalize()
    pass_seconds = time.perf_counter() - started

    model_spec = store.manifest.get("model", {}).get("spec")
    norm_name = None
    if cfg.logit_effects:
        if lm is None:
            if not model_spec:
                raise SaeKitError(f"{store.path} does not record its model; pass --no-logit-effects")
            lm = load_model(model_spec, device=device)
        effects = logit_effects(autoencoder.W_dec.detach(), lm.model, top=cfg.logit_top)
        tensors.update(effects.tensors())
        norm_name = effects.norm_name
        # A copy of the tokenizer: dashboards then render tokens without loading the model
        # (reading a GGUF file just for its tokenizer takes ~20 s).
        lm.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))

    info = analysis_info(cfg, store, hook, autoencoder, stats.n_tokens, model_spec, norm_name, pass_seconds)
    # Tensors then JSON, each written atomically: a reader never sees half a file, and the JSON
    # (which marks the directory as an analysis) appears only once the tensors are complete.
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / TENSORS_FILE, tensors, metadata={"format": FORMAT})
    atomic_write_json(out / INFO_FILE, info)
    finish_output_dir(out)
    return load_analysis(out)


def _store_and_hook(cfg: AnalysisConfig, autoencoder) -> tuple[ActivationStore, str]:
    """The store to analyse and the stored hook name (the run's, unless the config names others)."""
    info = RunInfo.of(autoencoder)
    store = ActivationStore(info.store_path(cfg.store))
    hook = store.resolve_hook_name(cfg.hook or info.stored_hook)
    if store.d_in(hook) != autoencoder.d_in:
        raise SaeKitError(f"hook {hook} of {store.path} has width {store.d_in(hook)}, the autoencoder takes "
                          f"d_in={autoencoder.d_in}; pass the store and --hook it was trained on")
    return store, hook


def analysis_info(cfg: AnalysisConfig, store: ActivationStore, hook: str, autoencoder, n_tokens: int,
                  model_spec: str | None, norm_name: str | None, seconds: float) -> dict:
    """analysis.json: what was analysed with what, the settings, and how long the pass took."""
    return {
        "format": FORMAT,
        "sae_kit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": str(Path(cfg.run).resolve()) if cfg.run else None,
        "store": str(store.path.resolve()),
        "hook": hook,
        "model": model_spec,
        "tokenizer": store.manifest.get("tokenizer", {}).get("name_or_path"),
        "context_len": store.context_len,
        "arch": getattr(autoencoder, "arch", None),
        "d_in": autoencoder.d_in,
        "d_sae": autoencoder.d_sae,
        "n_tokens": n_tokens,
        "top_k": cfg.top_k,
        "n_quantiles": cfg.n_quantiles,
        "hist_bins": cfg.hist_bins,
        "split": cfg.split,
        "skip_bos": cfg.skip_bos,
        "logit_effects": cfg.logit_effects,
        "logit_norm": norm_name,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1),
        "config": cfg.to_dict(),
    }
