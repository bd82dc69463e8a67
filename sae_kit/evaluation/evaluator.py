"""Evaluation on the store's held-out split: reconstruction metrics and spliced-model CE / KL.

Definitions (formulas in `sae_kit.evaluation.metrics`, which this module only accumulates):
- MSE: per-element mean squared error; FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² over the eval tokens
  (x̄ their mean); explained variance = 1 − FVU; L0 = mean non-zero latents per token;
  L1 = mean Σ_i |z_i| per token; dead fraction = latents that never fire on the eval tokens;
  dense fraction = latents firing on more than 10 % of them.
- Spliced (on held-out contexts, language model loaded): mean next-token CE of the clean
  model, with x̂ spliced in at the hook, with the site zero-ablated and mean-ablated (x̄ of
  the eval split); CE loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean);
  Δ CE = CE_spliced − CE_clean (nats); KL(clean ‖ spliced) per predicted token. Position 0
  (BOS) is never replaced when the store prepends BOS, matching training, which skips it.
- Core set of SAELens / SAEBench (`sae_kit.evaluation.core`, in the same pass): cosine, L2
  ratio, relative reconstruction bias, legacy explained variance, densities, weight geometry.
- Suites (`sae_kit.evaluation.suites`): --suite probing (sparse probing), absorption.
- Transcoders (`RunInfo.target_point`): the reconstruction metrics compare the prediction ŷ with
  the target y (the MLP's output), read from the same store rows as the input x; the spliced
  model replaces the MLP's OUTPUT with ŷ computed from the MLP's INPUT in the same forward pass,
  and the ablations zero / mean-ablate the MLP's output.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sae_kit.artifacts import atomic_write_json, atomic_write_text
from sae_kit.autoencoders import Autoencoder, RunInfo, load_autoencoder, run_dirs, run_info
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.evaluation.core import CoreSums, core_metrics
from sae_kit.evaluation.metrics import ce_loss_recovered, dead_fraction, dense_fraction, fvu_from_sums, kl_from_logits, next_token_ce
from sae_kit.evaluation.suites import LanguageModelSource, run_suites, suite_tables
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.hooks import intervene, resolve_hooks
from sae_kit.lm.models import choose_device

EVAL_FILE = "eval.json"
TABLE_FILE = "eval.md"
SUITES = ("core", "probing", "absorption")


@dataclass(frozen=True)
class EvalConfig(JsonConfig):
    """What `sae-kit evaluate` measures and on what."""

    nonempty = ('run',)

    run: str
    """A run directory, or a sweep root (every sub-run is evaluated and tabulated), or a SAELens,
    sparsify, Gemma Scope or dictionary_learning directory (`load_pretrained`; then --store)."""
    hook: str | None = None
    """The store's hook point the model reads; None means the one the run records (foreign models may not)."""
    store: str | None = None
    """Activation store with the held-out split; None means the store the run was trained on."""
    model: str | None = None
    """Language model for spliced CE; None means the store's model ('default', a path or a hub id)."""
    eval_tokens: int | None = None
    """Cap on held-out tokens for reconstruction metrics; None means the whole eval split."""
    batch_size: int = 4096
    """Tokens per batch for reconstruction metrics."""
    ce_contexts: int = 64
    """Held-out contexts for the spliced-model metrics; 0 skips them."""
    ce_batch_size: int = 8
    """Contexts per language-model forward pass."""
    dense_threshold: float = 0.1
    """Firing rate above which a latent counts as dense."""
    device: str | None = None
    """Device (default: CUDA when present, else CPU)."""
    suites: tuple[str, ...] = ("core",)
    """Suites: core (always on: cosine, shrinkage, densities, weight geometry), probing (sparse
    probing), absorption (first-letter feature absorption); a comma list or the flag repeated."""
    probe_datasets: tuple[str, ...] = ("python-docs",)
    """Sparse-probing datasets: python-docs (offline: stdlib package, prose vs code) and/or SAEBench's
    hub datasets LabHC/bias_in_bios_class_set1|2|3, fancyzhx/ag_news, Helsinki-NLP/europarl,
    codeparrot/github-code (where the hub is reachable)."""
    probe_k: tuple[int, ...] = (1, 2, 5, 10, 20)
    """How many latents (and raw dimensions) the k-sparse probes use."""
    probe_train_size: int = 400
    """Train texts per probing task, half of them positive (fewer where a class has fewer texts)."""
    probe_test_size: int = 200
    """Test texts per probing task."""
    probe_context_len: int = 128
    """Tokens per probing text, BOS included (SAEBench: 128)."""
    probe_batch_size: int = 16
    """Texts or first-letter prompts per language-model forward pass."""
    absorption_words: int = 2000
    """Single-token alphabetic words sampled from the vocabulary for the first-letter task (80 % train)."""
    absorption_icl_examples: int = 10
    """In-context examples in each first-letter prompt (SAEBench: 10)."""
    absorption_max_k: int = 10
    """Largest k of the k-sparse probes that find a letter's main latents (SAEBench: 10)."""
    absorption_min_probe_f1: float = 0.6
    """Letters whose ground-truth probe reaches no more test F1 than this are left out (SAEBench: 0.6)."""
    seed: int = 0
    """Seed for the probing texts, the absorption words and their prompts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1 or self.ce_batch_size < 1 or self.ce_contexts < 0:
            raise SaeKitError("batch sizes must be positive and --ce-contexts non-negative")
        if self.eval_tokens is not None and self.eval_tokens < 1:
            raise SaeKitError(f"--eval-tokens must be positive (got {self.eval_tokens})")
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown:
            hint = " (autointerp is its own command: sae-kit explain)" if "autointerp" in unknown else ""
            raise SaeKitError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}{hint}")
        if not self.probe_k or min(self.probe_k) < 1 or self.absorption_max_k < 1:
            raise SaeKitError("--probe-k and --absorption-max-k must be positive")
        if min(self.probe_train_size, self.probe_test_size) < 4 or self.probe_context_len < 2:
            raise SaeKitError("--probe-train-size and --probe-test-size need at least 4 texts, --probe-context-len 2 tokens")
        if self.absorption_words < 10 or self.absorption_icl_examples < 0 or self.probe_batch_size < 1:
            raise SaeKitError("--absorption-words needs at least 10, --absorption-icl-examples ≥ 0, --probe-batch-size ≥ 1")


class ReconstructionStats:
    """Running sums over eval batches, in float64, from which every reconstruction metric follows."""

    def __init__(self, d_in: int, d_sae: int):
        """d_in: the width of what is reconstructed (a transcoder's d_out)."""
        self.n = 0
        self.sse = 0.0  # Σ ‖x − x̂‖²
        self.sum_sq = 0.0  # Σ ‖x‖²
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)  # Σ x
        self.l0_sum = 0.0  # Σ #{i : z_i ≠ 0}
        self.l1_sum = 0.0  # Σ Σ_i |z_i|
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long)  # per latent: tokens with z_i ≠ 0
        self.core = CoreSums()  # cosine, L2 ratio, relative reconstruction bias … (sae_kit.evaluation.core)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor) -> None:
        """Add a batch: x, x_hat [n, d_in]; z [n, d_sae]."""
        x, x_hat, z = x.double().cpu(), x_hat.double().cpu(), z.cpu()
        self.n += x.shape[0]
        self.sse += float((x - x_hat).pow(2).sum())
        self.sum_sq += float(x.pow(2).sum())
        self.sum_x += x.sum(0)
        active = z != 0
        self.l0_sum += float(active.sum())
        self.l1_sum += float(z.double().abs().sum())
        self.fire_counts += active.sum(0)
        self.core.update(x, x_hat)

    @property
    def mean(self) -> torch.Tensor:
        """x̄ [d_in] of the tokens seen."""
        return self.sum_x / max(self.n, 1)

    def result(self, dense_threshold: float = 0.1) -> dict:
        fvu = fvu_from_sums(self.sse, self.sum_sq, self.sum_x, self.n)
        return {
            "n_tokens": self.n,
            "mse": self.sse / (self.n * self.sum_x.numel()),
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "l0": self.l0_sum / self.n,
            "l1": self.l1_sum / self.n,
            "dead_fraction": dead_fraction(self.fire_counts),
            "dense_fraction": dense_fraction(self.fire_counts, self.n, dense_threshold),
        }


@torch.no_grad()
def reconstruction_stats(models: dict[str, Autoencoder], batches: Iterable) -> tuple[dict, torch.Tensor]:
    """One pass over eval batches [n, d_in] for several models at once: name -> ReconstructionStats,
    and the eval-set mean x̄ [d_in] (for mean ablation). Batches of pairs (x [n, d_in], y [n, d_out])
    score transcoders: the statistics (and the mean) are those of y against ŷ(x)."""
    stats = {name: ReconstructionStats(m.d_out, m.d_sae) for name, m in models.items()}
    mean = None
    for batch in batches:
        x, y = batch if isinstance(batch, tuple) else (batch, batch)
        for name, model in models.items():
            x_dev, y_dev = x.to(model.W_dec.device), y.to(model.W_dec.device)
            z = model.encode(x_dev)
            stats[name].update(y_dev, model.predict(z, x_dev), z)
            mean = stats[name].mean
    if not stats or next(iter(stats.values())).n == 0:
        raise SaeKitError("the store's eval split is empty; harvest more contexts (every 20th is held out)")
    return stats, mean.float()


# ----------------------------------------------------------------------------- spliced model


def splice_reconstruction(model: Autoencoder, keep_first: bool) -> Callable[..., torch.Tensor]:
    """(hidden [b, seq, d_out], source [b, seq, d_in]) -> hidden with x̂ = reconstruct(source) in
    place of every position (but position 0 when `keep_first`, the BOS the SAE never saw). For an
    autoencoder source is hidden itself (the default); for a transcoder hidden is the MLP's
    output and source its input (`sae_kit.lm.hooks.intervene` with `read`)."""

    def replace(hidden: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        source = hidden if source is None else source
        x_hat = model.reconstruct(source.to(model.W_dec.dtype)).to(hidden.dtype)
        return _keep_first(hidden, x_hat, keep_first)

    return replace


def splice_constant(value: torch.Tensor, keep_first: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden -> `value` [d] at every position (zero ablation: value = 0; mean ablation: x̄)."""

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        return _keep_first(hidden, value.to(hidden).expand_as(hidden), keep_first)

    return replace


def _keep_first(hidden: torch.Tensor, new: torch.Tensor, keep_first: bool) -> torch.Tensor:
    if not keep_first:
        return new
    return torch.cat([hidden[:, :1], new[:, 1:]], dim=1)


class SplicedStats:
    """Running sums for one intervention: Σ CE, Σ KL(clean ‖ spliced), count of predictions."""

    def __init__(self):
        self.ce_sum, self.kl_sum, self.n = 0.0, 0.0, 0

    def update(self, tokens: torch.Tensor, logits: torch.Tensor, clean_logits: torch.Tensor) -> None:
        ce = next_token_ce(logits, tokens)
        kl = kl_from_logits(clean_logits[:, :-1], logits[:, :-1])
        self.ce_sum += float(ce.double().sum())
        self.kl_sum += float(kl.double().sum())
        self.n += ce.numel()

    @property
    def ce(self) -> float:
        return self.ce_sum / self.n

    @property
    def kl(self) -> float:
        return self.kl_sum / self.n


@torch.no_grad()
def spliced_metrics(lm, module_name: str, contexts: torch.Tensor, models: dict[str, Autoencoder],
                    mean: torch.Tensor, keep_first: bool, batch_size: int = 8, *,
                    read: str | None = None) -> dict[str, dict]:
    """CE clean / spliced / zero- and mean-ablated, CE loss recovered, ΔCE and KL for each model.

    lm: a Hugging Face causal LM; module_name: the hook point replaced (and ablated);
    read: the hook point the models encode, if another (a transcoder's MLP input, module_name
    being the MLP's output); contexts [n, seq] token ids. Returns name -> metrics. The clean and
    ablated passes are shared by all models.
    """
    device = next(lm.parameters()).device
    clean, zero, mean_abl = SplicedStats(), SplicedStats(), SplicedStats()
    spliced = {name: SplicedStats() for name in models}
    ablations = ((zero, splice_constant(torch.zeros_like(mean), keep_first)),
                 (mean_abl, splice_constant(mean, keep_first)))
    for start in range(0, len(contexts), batch_size):
        tokens = contexts[start : start + batch_size].to(device)
        clean_logits = lm(input_ids=tokens, use_cache=False).logits
        clean.update(tokens, clean_logits, clean_logits)
        for stats, fn in ablations:
            with intervene(lm, module_name, fn):
                stats.update(tokens, lm(input_ids=tokens, use_cache=False).logits, clean_logits)
        for name, model in models.items():
            with intervene(lm, module_name, splice_reconstruction(model, keep_first), read=read or module_name):
                spliced[name].update(tokens, lm(input_ids=tokens, use_cache=False).logits, clean_logits)
    results = {}
    for name, stats in spliced.items():
        results[name] = {
            "n_contexts": len(contexts),
            "n_predictions": stats.n,
            "ce_clean": clean.ce,
            "ce_spliced": stats.ce,
            "ce_zero_ablated": zero.ce,
            "ce_mean_ablated": mean_abl.ce,
            "ce_loss_recovered": ce_loss_recovered(clean.ce, stats.ce, zero.ce),
            "ce_loss_recovered_vs_mean_ablation": ce_loss_recovered(clean.ce, stats.ce, mean_abl.ce),
            "delta_ce": stats.ce - clean.ce,
            "kl_clean_spliced": stats.kl,
        }
    return results


def held_out_contexts(store, hook: str, n: int) -> torch.Tensor:
    """Token ids [m, context_len] of the first n held-out (eval split) contexts, m ≤ n."""
    rows: list[torch.Tensor] = []
    for chunk in store.iter_chunks(hook, split="eval"):
        for context in chunk.context.unique(sorted=True).tolist():
            where = chunk.context == context
            rows.append(chunk.tokens[where][chunk.position[where].argsort()])
            if len(rows) >= n:
                return torch.stack(rows)
    if not rows:
        raise SaeKitError("the store holds no held-out context; harvest more (every 20th context is held out)")
    return torch.stack(rows)


# ----------------------------------------------------------------------------- runs and sweeps


def evaluate(cfg: EvalConfig, *, lm=None) -> dict[str, dict]:
    """Evaluate a run (or every run of a sweep): writes eval.json into each run dir and eval.md
    (a table) into cfg.run; returns name -> metrics. All models of one hook share one pass over
    the eval split and one set of clean / ablated language-model passes; a run of several hooks
    (on the fly) is evaluated hook by hook, each on its own activations. `lm` reuses an already
    loaded `sae_kit.lm.models.LoadedModel` instead of loading cfg.model / the store's model."""
    groups: dict[tuple, tuple[RunInfo, dict[str, Path]]] = {}
    for name, path in run_dirs(cfg.run).items():
        info = run_info(path)  # read once: a foreign format's files are parsed here, not again per group
        groups.setdefault((info.store, info.stored_hook, info.stored_target), (info, {}))[1][name] = path
    results: dict[str, dict] = {}
    for info, dirs in groups.values():
        group, lm = _evaluate_group(cfg, info, dirs, lm)
        results.update(group)
    store_path = next(iter(results.values()))["store"]
    hooks = ", ".join(dict.fromkeys(r["hook"] + (f", predicting {r['target']}" if r.get("target") else "")
                                    for r in results.values()))
    table = results_table(results)
    atomic_write_text(Path(cfg.run, TABLE_FILE), f"# Evaluation of {cfg.run}\n\nHeld-out split of {store_path} at {hooks}.\n\n"
                                                  f"{table}\n\n{suite_tables(results)}")
    print(table)
    return results


def _evaluate_group(cfg: EvalConfig, info: RunInfo, dirs: dict[str, Path], lm) -> tuple[dict[str, dict], object]:
    """evaluate() for runs of one store and hook (`info`: the provenance of the first of them);
    returns (name -> metrics, the language model used)."""
    store_path = info.store_path(cfg.store)
    store = ActivationStore(store_path)
    hook = store.resolve_hook_name(cfg.hook or info.stored_hook)
    target = store.resolve_hook_name(info.stored_target) if info.stored_target else None  # transcoders
    device = lm.device if lm is not None else choose_device(cfg.device)
    models = {name: load_autoencoder(path, device=device) for name, path in dirs.items()}
    for name, model in models.items():
        if model.d_in != store.d_in(hook):
            raise SaeKitError(f"{name} takes d_in={model.d_in} but {hook} in {store_path} has d={store.d_in(hook)}")
        if model.d_out != store.d_in(target or hook):
            raise SaeKitError(f"{name} outputs d_out={model.d_out} but {target or hook} in {store_path} has "
                              f"d={store.d_in(target or hook)}")

    batches = store.batches(hook if target is None else (hook, target), cfg.batch_size, shuffle=False, split="eval",
                            epochs=1, drop_last=False, device=device)
    stats, mean = reconstruction_stats(models, _capped(batches, cfg.eval_tokens))
    results = {name: {"run": str(dirs[name]), "name": name, "arch": models[name].arch, "d_sae": models[name].d_sae,
                      "store": str(Path(store_path).resolve()), "hook": hook, "split": "eval",
                      "reconstruction": stats[name].result(cfg.dense_threshold), "spliced": None}
               for name in models}
    for name, result in results.items():
        sums = stats[name]
        result["core"] = core_metrics(models[name], sums.core, sums.fire_counts, sums.n,
                                      result["reconstruction"]["explained_variance"], dirs[name])
        if target is not None:
            result["target"] = target
    language = LanguageModelSource(cfg.model, store, lm, device)
    skipped = (_add_spliced(cfg, results, models, store, hook, mean, language, target=target)
               if cfg.ce_contexts > 0 else "--ce-contexts 0")
    run_suites(cfg, results, models, store, hook, language)
    for name, result in results.items():
        if skipped:
            result["spliced_skipped"] = skipped
        result["suites"] = ["core", *(suite for suite in SUITES[1:] if suite in cfg.suites)]
        result["eval_config"] = asdict(cfg)
        atomic_write_json(dirs[name] / EVAL_FILE, result)
    return results, language.lm


def _add_spliced(cfg: EvalConfig, results: dict, models: dict, store: ActivationStore, hook: str,
                 mean: torch.Tensor, language: LanguageModelSource, target: str | None = None) -> str | None:
    """Add the spliced-model metrics to `results`; returns why they were skipped, or None.
    With a `target` (transcoders) the models read `hook` and their output replaces `target`."""
    try:
        lm = language.get()
        read = resolve_hooks(lm.model, [hook])[0]
        write = resolve_hooks(lm.model, [target])[0] if target else read
        contexts = held_out_contexts(store, hook, cfg.ce_contexts)
        keep_first = bool(store.manifest.get("prepend_bos", True))
        spliced = spliced_metrics(lm.model, write, contexts, models, mean, keep_first, cfg.ce_batch_size, read=read)
    except SaeKitError as err:
        print(f"sae-kit evaluate: spliced-model metrics skipped: {err}", file=sys.stderr)
        return str(err)
    for name in models:
        results[name]["spliced"] = spliced[name]
        results[name]["language_model"] = lm.spec
    return None


def _capped(batches, max_tokens: int | None):
    """The batches (tensors, or tuples of tensors of the same rows) cut at `max_tokens` rows."""
    seen = 0
    for batch in batches:
        n = (batch[0] if isinstance(batch, tuple) else batch).shape[0]
        if max_tokens is not None and seen + n > max_tokens:
            n = max_tokens - seen
            batch = tuple(t[:n] for t in batch) if isinstance(batch, tuple) else batch[:n]
        if n == 0:
            break
        seen += n
        yield batch
        if max_tokens is not None and seen >= max_tokens:
            break
    close = getattr(batches, "close", None)
    if close:
        close()


def results_table(results: dict[str, dict]) -> str:
    """A markdown table: FVU, explained variance, L0, dead %, dense %, CE recovered, ΔCE, KL."""
    lines = ["| model | arch | d_sae | FVU | expl. var. | L0 | dead % | dense % | CE recovered | Δ CE (nats) | KL |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        rec, sp = r["reconstruction"], r.get("spliced")
        ce = (f"{sp['ce_loss_recovered']:.3f} | {sp['delta_ce']:.4f} | {sp['kl_clean_spliced']:.4f}"
              if sp else "- | - | -")
        lines.append(f"| {name} | {r['arch']} | {r['d_sae']} | {rec['fvu']:.4f} | {rec['explained_variance']:.4f} | "
                     f"{rec['l0']:.1f} | {100 * rec['dead_fraction']:.1f} | {100 * rec['dense_fraction']:.1f} | {ce} |")
    return "\n".join(lines)
