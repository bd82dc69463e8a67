"""The suites `sae-kit evaluate --suite probing,absorption` adds, run for every model of a sweep at once.

The language model is loaded once (`LanguageModelSource`) for the spliced metrics and every suite;
each suite runs its texts through it once and encodes the same hidden states with every model.
A suite that cannot run (no language model, a hub dataset offline, a vocabulary without enough
first-letter words) is skipped with one line on stderr and `"<suite>_skipped": reason` in eval.json,
like the spliced metrics. Markdown tables of the core set and the suites are made here for eval.md.
"""

from __future__ import annotations

import sys
import time

from sae_kit.errors import SaeKitError
from sae_kit.evaluation.absorption import absorption_result, prepare_first_letter
from sae_kit.evaluation.probing import pooled_activations, probing_result, raw_probe_results, tokenize_texts
from sae_kit.evaluation.tasks import build_tasks
from sae_kit.lm.corpus import special_token_ids
from sae_kit.lm.hooks import resolve_hooks
from sae_kit.lm.models import load_model


class LanguageModelSource:
    """The language model, loaded on first use and then shared (a failure is remembered, not retried)."""

    def __init__(self, spec: str | None, store, lm=None, device=None):
        self.spec, self.store, self.lm, self.device = spec, store, lm, device
        self.error: SaeKitError | None = None

    def get(self):
        """The `LoadedModel`; raises SaeKitError when it cannot be loaded."""
        if self.lm is None and self.error is None:
            try:
                spec = self.spec or self.store.manifest.get("model", {}).get("spec")
                if not spec:
                    raise SaeKitError("the store does not record its model; pass --model")
                self.lm = load_model(spec, device=self.device)
            except SaeKitError as err:
                self.error = err
        if self.error is not None:
            raise self.error
        return self.lm


def run_suites(cfg, results: dict[str, dict], models: dict, store, hook: str, language: LanguageModelSource) -> None:
    """Add results[name]["probing"] / ["absorption"] for the suites in cfg.suites (cfg: EvalConfig)."""
    for suite, runner in (("probing", _probing), ("absorption", _absorption)):
        if suite not in cfg.suites:
            continue
        try:
            lm = language.get()
            module = resolve_hooks(lm.model, [hook])[0]
            started = time.perf_counter()
            per_model = runner(cfg, models, lm, module, bool(store.manifest.get("prepend_bos", True)))
        except SaeKitError as err:
            print(f"sae-kit evaluate: {suite} skipped: {err}", file=sys.stderr)
            for result in results.values():
                result[suite], result[f"{suite}_skipped"] = None, str(err)
            continue
        for name, result in results.items():
            result[suite] = {**per_model[name], "seconds": round(time.perf_counter() - started, 1)}
            if "warning" in per_model[name]:
                print(f"sae-kit evaluate: {suite} of {name}: {per_model[name]['warning']}", file=sys.stderr)


def _log(message: str) -> None:
    print(f"sae-kit evaluate: {message}", file=sys.stderr, flush=True)


def _probing(cfg, models: dict, lm, module: str, prepend_bos: bool) -> dict[str, dict]:
    tasks = build_tasks(cfg.probe_datasets, cfg.probe_train_size, cfg.probe_test_size, cfg.seed)
    ids = tokenize_texts(lm.tokenizer, tasks.texts, cfg.probe_context_len, prepend_bos)
    _log(f"probing: {len(tasks.tasks)} tasks, {len(tasks.texts)} texts ({sum(map(len, ids))} tokens) "
         f"through {module}, encoded by {len(models)} model(s)")
    pooled = pooled_activations(lm.model, module, ids, models, prepend_bos, cfg.probe_batch_size,
                                special_token_ids(lm.tokenizer)[1])
    raw = raw_probe_results(pooled, tasks, cfg.probe_k)
    return {name: probing_result(pooled.latents[name], tasks, cfg.probe_k, raw, pooled.n_tokens) for name in models}


def _absorption(cfg, models: dict, lm, module: str, prepend_bos: bool) -> dict[str, dict]:
    _log(f"absorption: {cfg.absorption_words} first-letter prompts through {module}")
    data = prepare_first_letter(lm.model, lm.tokenizer, module, n_words=cfg.absorption_words,
                                icl_examples=cfg.absorption_icl_examples, prepend_bos=prepend_bos, seed=cfg.seed,
                                batch_size=cfg.probe_batch_size)
    return {name: absorption_result(model, data, cfg.absorption_max_k, cfg.absorption_min_probe_f1)
            for name, model in models.items()}


# ----------------------------------------------------------------------------- tables


def _number(value, digits: int = 3, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def core_table(results: dict[str, dict]) -> str:
    """Markdown: the core set beyond eval.md's first table (SAELens / SAEBench names in eval.json)."""
    lines = ["| model | cos(x, x̂) | ‖x̂‖/‖x‖ | γ (rel. rec. bias) | expl. var. | expl. var. (legacy) | alive % | "
             "> 1 % dense | mean max dec. cos | enc–dec cos (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        c = r["core"]
        lines.append(f"| {name} | {_number(c['cossim'])} | {_number(c['l2_ratio'])} | "
                     f"{_number(c['relative_reconstruction_bias'])} | {_number(c['explained_variance'])} | "
                     f"{_number(c['explained_variance_legacy'])} | {_number(c['frac_alive'], 1, 100)} | "
                     f"{_number(c['freq_over_1_percent'], 1, 100)} | {_number(c['average_max_decoder_cosine_sim'])} | "
                     f"{_number(c['encoder_decoder_cosine_sim'].get('median'))} |")
    return "\n".join(lines)


def probing_table(results: dict[str, dict]) -> str | None:
    """Markdown: mean test accuracy of k-sparse probes per model, and the raw-activation ceiling."""
    probed = {name: r["probing"] for name, r in results.items() if r.get("probing")}
    if not probed:
        return None
    ks = next(iter(probed.values()))["k"]
    lines = ["| model | " + " | ".join(f"top {k}" for k in ks) + " | all dims |",
             "|---|" + "---:|" * (len(ks) + 1)]
    for name, p in probed.items():
        lines.append(f"| {name} | " + " | ".join(_number(p["mean"][f"sae_top_{k}_test_accuracy"]) for k in ks) + " | - |")
    mean = next(iter(probed.values()))["mean"]
    lines.append("| raw activations (ceiling) | " + " | ".join(_number(mean[f"llm_top_{k}_test_accuracy"]) for k in ks)
                 + f" | {_number(mean['llm_test_accuracy'])} |")
    return "\n".join(lines)


def absorption_table(results: dict[str, dict]) -> str | None:
    """Markdown: SAEBench's absorption scores per model (lower is better)."""
    scored = {name: r["absorption"] for name, r in results.items() if r.get("absorption")}
    if not scored:
        return None
    lines = ["| model | mean absorption fraction | full absorption rate | split features | letters |",
             "|---|---:|---:|---:|---:|"]
    for name, a in scored.items():
        lines.append(f"| {name} | {_number(a['mean_absorption_fraction_score'])} | "
                     f"{_number(a['mean_full_absorption_score'])} | {_number(a['mean_num_split_features'], 2)} | "
                     f"{a['n_letters_evaluated']} |")
    return "\n".join(lines)


def suite_tables(results: dict[str, dict]) -> str:
    """The core, probing and absorption sections of eval.md (skipped suites say why)."""
    first = next(iter(results.values()))
    parts = ["## Core metrics (SAELens / SAEBench)\n", core_table(results), ""]
    for title, suite, table in (("Sparse probing (mean test accuracy)", "probing", probing_table(results)),
                                ("Feature absorption (first letter)", "absorption", absorption_table(results))):
        if table:
            parts += [f"## {title}\n", table, ""]
            warning = (first.get(suite) or {}).get("warning")
            parts += [f"Note: {warning}.", ""] if warning else []
        elif first.get(f"{suite}_skipped"):
            parts += [f"## {title}\n", f"Skipped: {first[f'{suite}_skipped']}", ""]
    return "\n".join(parts) + "\n"
