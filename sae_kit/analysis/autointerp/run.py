"""`explain_features`: explain the chosen features of an analysis and score the explanations.

For each feature: the explainer writes an explanation from its top and band excerpts; the
scorer answers detection and fuzzing questions about held-out excerpts; the balanced
accuracies go into A/explanations.json (the format in INTERFACES.md, read back by
`sae_kit.analysis.result.load_explanations`) and every prompt, excerpt and answer into
A/autointerp/feature-<id>.json, so a score can be audited. Both are written after each
feature (atomically): a killed run resumes where it stopped, skipping features already
explained unless `overwrite`.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.analysis.autointerp.backends import make_chat_model
from sae_kit.analysis.autointerp.config import ExplainConfig
from sae_kit.analysis.autointerp.parsing import parse_explanation
from sae_kit.analysis.autointerp.prompts import EXPLANATION_PREFIX, explainer_example, explainer_messages
from sae_kit.analysis.autointerp.samples import FeatureExcerpts, collect_excerpts, random_windows
from sae_kit.analysis.autointerp.scoring import ask, detection_samples, fuzzing_samples
from sae_kit.analysis.result import (EXPLANATIONS_FILE, EXPLANATIONS_FORMAT, EXPLANATIONS_VERSION, load_analysis,
                                     parse_feature_list, select_features)
from sae_kit.artifacts import atomic_write_json, read_tagged_json
from sae_kit.autoencoders import load_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore

AUDIT_DIR = "autointerp"
AUDIT_FORMAT = "sae-kit-autointerp-feature"
CHUNK = 32
"""Features whose excerpts are gathered at once."""


def choose_features(analysis, cfg: ExplainConfig) -> list[int]:
    """--features, else the --top N by --sort-by within the density range; SaeKitError if neither."""
    if cfg.features is not None:
        return parse_feature_list(cfg.features, analysis.n_features)
    if cfg.top is None:
        raise SaeKitError("choose the features to explain with --features (e.g. 0-99) or --top N: "
                          "each one costs a few dozen language-model calls")
    chosen = select_features(analysis, min_density=cfg.min_density, max_density=cfg.max_density,
                             sort_by=cfg.sort_by, limit=cfg.top)
    if not chosen:
        raise SaeKitError("no feature matches the selection (every feature is dead, or the density range is empty)")
    return chosen


def chat_models(cfg: ExplainConfig, explainer=None, scorer=None):
    """(explainer, scorer) as given, else built from the config; one model object when they are the same."""
    common = dict(device=cfg.device, dtype=cfg.model_dtype, batch_size=cfg.batch_size, api_key_env=cfg.api_key_env,
                  seed=cfg.seed, temperature=cfg.temperature, timeout=cfg.timeout, concurrency=cfg.concurrency)
    if explainer is None:
        explainer = make_chat_model(cfg.explainer_model, cfg.explainer_url, **common)
    if scorer is None:
        model, url = cfg.scorer_spec
        same = (model, url) == (cfg.explainer_model, cfg.explainer_url)
        scorer = explainer if same else make_chat_model(model, url, **common)
    return explainer, scorer


def _start_payload(analysis_dir: Path, explainer, scorer, cfg: ExplainConfig) -> dict:
    """The explanations.json to extend: the existing one if made by the same models, else a new one."""
    fresh = {"format": EXPLANATIONS_FORMAT, "format_version": EXPLANATIONS_VERSION, "sae_kit_version": __version__,
             "explainer": explainer.describe(), "scorer": scorer.describe(), "created": _now(),
             "config": cfg.to_dict(), "features": {}, "unexplained": {}}
    if not (analysis_dir / EXPLANATIONS_FILE).is_file():
        return fresh
    old = read_tagged_json(analysis_dir, EXPLANATIONS_FILE, EXPLANATIONS_FORMAT, "explanations of features",
                           "`sae-kit explain`")
    if (old.get("explainer"), old.get("scorer")) != (fresh["explainer"], fresh["scorer"]):
        if not cfg.overwrite:
            raise SaeKitError(f"{analysis_dir / EXPLANATIONS_FILE} was written with explainer {old.get('explainer')} "
                              f"and scorer {old.get('scorer')}; use the same models, or --overwrite to start it "
                              "again with these (its other explanations are dropped)")
        return fresh
    return {**old, "config": cfg.to_dict(), "updated": _now(), "unexplained": old.get("unexplained", {})}


def explain_features(cfg: ExplainConfig, *, explainer=None, scorer=None, autoencoder=None, progress: bool = True) -> dict:
    """Explain and score the features `cfg` chooses; returns the explanations.json payload.

    `explainer`, `scorer`: chat models (`backends.TransformersChat`, `backends.OpenAIChat` or
    anything with `generate`, `yes_probability` and `describe`), else built from `cfg`."""
    analysis_dir = Path(cfg.analysis)
    analysis = load_analysis(analysis_dir)
    features = choose_features(analysis, cfg)
    explainer, scorer = chat_models(cfg, explainer, scorer)
    payload = _start_payload(analysis_dir, explainer, scorer, cfg)
    done = set(payload["features"]) | set(payload["unexplained"])
    todo = [f for f in features if cfg.overwrite or str(f) not in done]
    if len(todo) < len(features):
        print(f"sae-kit explain: {len(features) - len(todo)} of {len(features)} features already explained "
              "(--overwrite redoes them)", file=sys.stderr)
    if not todo:
        return payload
    if autoencoder is None:
        if not analysis.run:
            raise SaeKitError("the analysis records no run directory; pass the autoencoder")
        autoencoder = load_autoencoder(analysis.run, device=cfg.device)
    store, tokenizer = ActivationStore(analysis.store), analysis.load_tokenizer()
    (analysis_dir / AUDIT_DIR).mkdir(exist_ok=True)
    drawn = random_windows(store, analysis.hook, cfg.negative_candidates, cfg.before, cfg.after, cfg.seed)
    bar = tqdm(total=len(todo), desc="explain", unit="feature", disable=not progress)
    for start in range(0, len(todo), CHUNK):
        chunk = collect_excerpts(analysis, todo[start : start + CHUNK], autoencoder=autoencoder, store=store,
                                 tokenizer=tokenizer, drawn=drawn, after=cfg.after, explain_top=cfg.explain_top,
                                 explain_per_band=cfg.explain_per_band, n_test=cfg.n_test, seed=cfg.seed)
        for excerpts in chunk:
            record = explain_one(excerpts, float(analysis.max_activation[excerpts.feature]), explainer, scorer, cfg)
            key = str(excerpts.feature)
            atomic_write_json(analysis_dir / AUDIT_DIR / f"feature-{key}.json", record, fsync=False)
            payload["features"].pop(key, None)
            payload["unexplained"].pop(key, None)
            if record["explanation"]["text"] is None:
                payload["unexplained"][key] = record["explanation"]["parsed_from"]
            else:
                payload["features"][key] = summary(record)
            atomic_write_json(analysis_dir / EXPLANATIONS_FILE, payload, fsync=False)
            bar.update(1)
    bar.close()
    return payload


def explain_one(excerpts: FeatureExcerpts, max_activation: float, explainer, scorer, cfg: ExplainConfig) -> dict:
    """The audit record of one feature: the explainer's prompt and answer, then each scorer's."""
    started = time.perf_counter()
    feature = excerpts.feature
    record = {"format": AUDIT_FORMAT, "format_version": 1, "feature": feature, "created": _now(),
              "explainer": explainer.describe(), "scorer": scorer.describe(), "config": cfg.to_dict(),
              "max_activation": max_activation}
    shown = [explainer_example(i + 1, e.tokens, e.activations, e.marked(cfg.highlight_threshold), max_activation)
             for i, e in enumerate(excerpts.explain)]
    if not shown:
        record["explanation"] = {"text": None, "parsed_from": "no examples", "messages": None, "answer": None,
                                 "examples": []}
        return record
    messages = explainer_messages(shown)
    answer = explainer.generate([messages], cfg.max_new_tokens, prefix=EXPLANATION_PREFIX)[0]
    text, how = parse_explanation(answer)
    record["explanation"] = {"text": text, "parsed_from": how, "messages": messages, "answer": answer,
                             "examples": [e.to_dict() for e in excerpts.explain]}
    if text is None:
        return record
    rng = random.Random(f"{cfg.seed}:{feature}:score")
    for kind in cfg.scorers:
        samples = (detection_samples(excerpts) if kind == "detection"
                   else fuzzing_samples(excerpts, cfg.highlight_threshold, cfg.fuzz_negatives, rng))
        if not any(s.label for s in samples) or all(s.label for s in samples):
            record[kind] = {"balanced_accuracy": None, "n": len(samples), "n_unparsed": 0,
                            "note": "needs held-out excerpts of both kinds (the feature fired too rarely or too often)",
                            "samples": [s.to_dict() for s in samples], "queries": []}
            continue
        record[kind] = ask(scorer, samples, text, kind, answer=cfg.answer, per_prompt=cfg.examples_per_prompt, rng=rng)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def summary(record: dict) -> dict:
    """A feature's entry in explanations.json: its explanation and each scorer's score."""
    entry = {"explanation": record["explanation"]["text"]}
    for kind in ("detection", "fuzzing"):
        if kind in record:
            entry[kind] = {key: record[kind][key] for key in ("balanced_accuracy", "n", "n_unparsed", "auc")
                           if key in record[kind]}
    return entry


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
