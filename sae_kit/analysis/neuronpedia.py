"""`export_neuronpedia`: an analysis as the JSON Neuronpedia ingests.

    OUT/neuronpedia.json                         what was exported (sae-kit's manifest of the export)
    OUT/dashboard/batch-N.json                   SAEDashboard's NeuronpediaDashboardBatch files
    OUT/dashboard/skipped_indexes.json           features not exported (dead, or not chosen)
    OUT/export/{model_id}/{source_id}/…          Neuronpedia's bulk-import layout (`neuronpedia_upload`)

A batch file is what SAEDashboard's `NeuronpediaRunner` writes (`neuronpedia_dashboard.py`:
NeuronpediaDashboardBatch / Feature / Activation, filled as `neuronpedia_converter.py` fills
them), field for field: per feature its logit table (`pos_str`/`pos_values`, `neg_str`/
`neg_values`: the analysis' promoted and suppressed tokens), `frac_nonzero` (density), the
activation histogram (`freq_hist_data_bar_values` = bin centres, `_heights` = counts: the
analysis' histogram of non-zero activations, trimmed to its non-empty range), the logit
histogram (50 bins over the logit effect on every vocabulary token, SAEDashboard's
`HistogramData.from_data`; needs the language model, else empty), neuron alignment (the 3
largest decoder weights, their share of the decoder row's L1 norm) and `activations`: the top
examples (bin_min −1, bin_max the maximum, bin_contains −1) then each interval band from the
highest (its edges, and the fraction of analysed tokens in it), each with its tokens, values
and the example token's index. Correlation tables stay empty (SAEDashboard leaves them empty
too without its correlation pass). Tokens are decoded one by one (a leading space is a
space, newlines stay newlines, as SAEDashboard's vocabulary clean-up gives them); special
tokens keep their text and get the value 0 (SAEDashboard masks BOS/EOS/pad the same way).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sae_kit import __version__
from sae_kit.analysis.examples import ExampleWindows, example_windows
from sae_kit.analysis.logit_effects import unembedding
from sae_kit.analysis.neuronpedia_upload import (activation_rows, explanation_row, feature_row, model_row,
                                                 release_row, source_row, sourceset_row)
from sae_kit.analysis.result import (EXPLANATIONS_FILE, load_analysis, load_explanations, parse_feature_list,
                                     select_features)
from sae_kit.artifacts import atomic_write_bytes, atomic_write_json, finish_output_dir, prepare_output_dir
from sae_kit.autoencoders import load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.models import load_model
from sae_kit.lm.tokens import display_tokens

MANIFEST = "neuronpedia.json"
FORMAT = "sae-kit-neuronpedia-export"
HIST_BINS = 50
"""SAEDashboard's ActsHistogramConfig / LogitsHistogramConfig n_bins."""
ALIGNMENT_ROWS = 3
"""SAEDashboard's FeatureTablesConfig(n_rows=3)."""
FALLBACK_CREATOR_ID = "clkht01d40000jv08hvalcvly"
"""The creator id SAEDashboard's `resolve_creator_id` falls back to (no flag, no DEFAULT_CREATOR_ID)."""
EXPLANATION_TYPE = "sae-kit-autointerp"
"""typeName of the exported explanations (Neuronpedia's ExplanationType names the method)."""
HOOK_POINTS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out", "mlp_in": "hook_mlp_in"}
"""sae-kit hook aliases -> TransformerLens hook points (Neuronpedia names hooks the TransformerLens way)."""


@dataclass(frozen=True)
class NeuronpediaOptions(JsonConfig):
    """How an analysis is exported for Neuronpedia (`sae-kit export neuronpedia` flags)."""

    model_id: str | None = None
    """Neuronpedia model id (default: the analysed model's name in lower case, e.g. smollm2-135m-instruct)."""
    source_set: str | None = None
    """Neuronpedia source set id, without the layer (default: sae-kit-<arch>-<d_sae>)."""
    layer: int | None = None
    """Layer number (default: the hook's)."""
    sae_id_suffix: str | None = None
    """Optional suffix of the source id (<layer>-<source set>__<suffix>)."""
    hook_point: str | None = None
    """TransformerLens hook point, e.g. hook_resid_post (default: from the run's hook alias)."""
    creator_id: str | None = None
    """Neuronpedia creator id (default: $DEFAULT_CREATOR_ID, else SAEDashboard's fallback id)."""
    creator_name: str = "sae-kit"
    """Creator name shown on the release."""
    release_id: str | None = None
    """Release id (default: the source set id)."""
    release_title: str | None = None
    """Release title (default: a description of the run)."""
    url: str = ""
    """URL of the paper or project."""
    hf_repo_id: str = ""
    """Hugging Face repository holding the weights, if uploaded."""
    hf_weights_path: str = ""
    """Path of the weights inside that repository."""
    sort_by: Literal["max_activation", "density", "mean_nonzero", "index"] = "max_activation"
    """Order for --top, largest first."""
    batch_size: int = 128
    """Features per batch file (SAEDashboard's n_features_at_a_time)."""
    before: int | None = None
    """Tokens shown before each example token (default: from the start of its context)."""
    after: int | None = None
    """Tokens shown after it (default: to the end of its context)."""
    logits_histogram: bool = True
    """Compute the logit histogram over the vocabulary (loads the language model)."""
    vectors: bool = False
    """Include each feature's decoder direction (Neuronpedia's steering vector)."""
    device: str | None = None
    """Device for re-encoding (default: CPU)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SaeKitError("--batch-size must be at least 1")
        if (self.before is not None and self.before < 0) or (self.after is not None and self.after < 0):
            raise SaeKitError("--before and --after must be non-negative")


def export_neuronpedia(analysis_dir: str | Path, out_dir: str | Path, features: list[int] | str | None = None,
                       top: int | None = None, *, autoencoder=None, lm=None, overwrite: bool = False,
                       progress: bool = True, **options) -> Path:
    """Write the Neuronpedia export of `analysis_dir` into `out_dir`; returns `out_dir`.

    Features: `features` (ids, or a list like '0-99'), else the `top` N by `sort_by`, else
    every feature that fired. `options`: the fields of NeuronpediaOptions. Explanations from
    A/explanations.json (`sae-kit explain`) are included."""
    opts = NeuronpediaOptions(**options)
    analysis = load_analysis(analysis_dir)
    out = prepare_output_dir(out_dir, MANIFEST, "a Neuronpedia export", overwrite, clear=("dashboard", "export"))
    chosen = _choose(analysis, features, top, opts.sort_by)
    autoencoder = autoencoder if autoencoder is not None else load_autoencoder(analysis.run, device=opts.device)
    store, tokenizer = ActivationStore(analysis.store), analysis.load_tokenizer()
    ids = _identifiers(analysis, store, autoencoder, opts)
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    unembed = _unembedding(analysis, lm, opts, autoencoder)
    explanations = load_explanations(analysis_dir)
    source_dir = out / "export" / ids["model_id"] / ids["source_id"]
    for sub in ("features", "activations") + (("explanations",) if explanations else ()):
        (source_dir / sub).mkdir(parents=True, exist_ok=True)
    (out / "dashboard").mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "sae_kit_version": __version__, "created": created,
                "analysis": str(Path(analysis_dir).resolve()), **ids, "features": len(chosen),
                "explanations": len(explanations), "options": opts.to_dict(), "complete": False}
    atomic_write_json(out / MANIFEST, manifest)  # marks the directory, so an interrupted export can be overwritten
    context = dict(analysis=analysis, autoencoder=autoencoder, store=store, tokenizer=tokenizer, unembed=unembed,
                   explanations=explanations, ids=ids, opts=opts, created=created, out=out, source_dir=source_dir,
                   explainer=_explainer_name(analysis_dir))
    n_batches = 0
    for start in range(0, len(chosen), opts.batch_size):
        _write_batch(chosen[start : start + opts.batch_size], f"batch-{n_batches}", **context)
        n_batches += 1
        if progress:
            print(f"neuronpedia: {min(start + opts.batch_size, len(chosen))}/{len(chosen)} features", file=sys.stderr)
    _write_source_files(source_dir, analysis, store, ids, opts, created)
    skipped = sorted(set(range(analysis.n_features)) - set(chosen))
    atomic_write_json(out / "dashboard" / "skipped_indexes.json",
                      {"model_id": ids["model_id"], "layer": str(ids["layer"]), "sae_set": ids["source_set"],
                       "log_sparsity": None, "skipped_indexes": skipped}, fsync=False)
    atomic_write_json(out / MANIFEST, {**manifest, "batches": n_batches, "complete": True})
    finish_output_dir(out)
    return out


def _write_batch(batch: list[int], name: str, *, analysis, autoencoder, store, tokenizer, unembed, explanations,
                 ids: dict, opts: NeuronpediaOptions, created: str, out: Path, source_dir: Path, explainer: str) -> None:
    """dashboard/NAME.json and the features, activations and explanations NAME.jsonl.gz of `batch`."""
    before = store.context_len if opts.before is None else opts.before
    after = store.context_len if opts.after is None else opts.after
    windows = example_windows(analysis, batch, autoencoder=autoencoder, store=store, before=before, after=after)
    token_ids = [windows.tokens[windows.tokens >= 0]]
    if analysis.promoted_ids is not None:
        token_ids += [analysis.promoted_ids[batch].reshape(-1), analysis.suppressed_ids[batch].reshape(-1)]
    names = display_tokens(tokenizer, torch.cat(token_ids).unique().tolist(), visible=False)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    feats = [dashboard_feature(analysis, windows, row, names, special, autoencoder, unembed, store, opts)
             for row in range(len(batch))]
    payload = {"model_id": ids["model_id"], "layer": ids["layer"], "sae_set": ids["source_set"],
               "sae_id_suffix": opts.sae_id_suffix, "features": feats}
    atomic_write_bytes(out / "dashboard" / f"{name}.json", json.dumps(payload).encode(), fsync=False)
    common = dict(model_id=ids["model_id"], source_id=ids["source_id"], creator_id=ids["creator_id"], created=created)
    _write_jsonl_gz(source_dir / "features" / f"{name}.jsonl.gz",
                    [feature_row(f, hook_name=ids["hook_name"], **common) for f in feats])
    _write_jsonl_gz(source_dir / "activations" / f"{name}.jsonl.gz",
                    [row for f in feats for row in activation_rows(f, **common)])
    if explanations:
        rows = [explanation_row(f, explanations[f], explainer_model=explainer, type_name=EXPLANATION_TYPE, **common)
                for f in batch if f in explanations and explanations[f].get("explanation")]
        _write_jsonl_gz(source_dir / "explanations" / f"{name}.jsonl.gz", rows)


def dashboard_feature(analysis, windows: ExampleWindows, row: int, names: dict[int, str], special: set[int],
                      autoencoder, unembed, store: ActivationStore, opts: NeuronpediaOptions) -> dict:
    """One NeuronpediaDashboardFeature.to_dict() of row `row` of `windows`."""
    f = int(windows.features[row])
    W_dec = autoencoder.W_dec.detach()[f].float().cpu()  # [d_in]
    align = W_dec.topk(min(ALIGNMENT_ROWS, W_dec.shape[0]))
    pos_str, pos_values, neg_str, neg_values = [], [], [], []
    if analysis.promoted_ids is not None:
        pos_str = [names[int(i)] for i in analysis.promoted_ids[f]]
        pos_values = _rounded(analysis.promoted_logits[f])
        neg_str = [names[int(i)] for i in analysis.suppressed_ids[f]]
        neg_values = _rounded(analysis.suppressed_logits[f])
    hist_values, hist_heights = activation_histogram(analysis.hist_counts[f], float(analysis.hist_upper[f]))
    logit_values, logit_heights = ([], []) if unembed is None else histogram(
        unembed.direction_logits(autoencoder.W_dec.detach()[f : f + 1].float())[0].float().cpu(), HIST_BINS)
    n_prompts, n_tokens_in_prompt = _prompt_counts(analysis, store)
    return {
        "feature_index": f,
        "neuron_alignment_indices": align.indices.tolist(), "neuron_alignment_values": _rounded(align.values),
        "neuron_alignment_l1": _rounded(align.values.abs() / W_dec.abs().sum().clamp_min(1e-12)),
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": neg_str, "neg_values": neg_values, "pos_str": pos_str, "pos_values": pos_values,
        "frac_nonzero": float(analysis.density[f]),
        "freq_hist_data_bar_values": hist_values, "freq_hist_data_bar_heights": hist_heights,
        "logits_hist_data_bar_heights": logit_heights, "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": n_prompts, "n_tokens_in_prompt": n_tokens_in_prompt, "dataset": _dataset(store),
        "decoder_weights_dist": [],
        "activations": dashboard_activations(analysis, windows, row, names, special),
        "vector": _rounded(W_dec) if opts.vectors else [],
    }


def dashboard_activations(analysis, windows: ExampleWindows, row: int, names: dict[int, str],
                          special: set[int]) -> list[dict]:
    """NeuronpediaDashboardActivation.to_dict() of every example: the top group, then the bands from the highest."""
    f, k, Q = int(windows.features[row]), windows.top_k, analysis.n_quantiles
    groups = [(range(k), -1.0, round(float(analysis.max_activation[f]), 5), -1.0)]
    for q in reversed(range(Q)):
        groups.append((range(k * (1 + q), k * (2 + q)), round(float(analysis.band_lower[f, q]), 5),
                       round(float(analysis.band_upper[f, q]), 5),
                       round(float(analysis.band_counts[f, q]) / max(analysis.n_tokens, 1), 6)))
    out = []
    for slots, bin_min, bin_max, bin_contains in groups:
        for slot in slots:
            if int(windows.centers[row, slot]) < 0:
                continue
            ids, acts = windows.tokens[row, slot], windows.activations[row, slot]
            keep = (ids >= 0).nonzero().squeeze(1).tolist()
            values = [0.0 if int(ids[j]) in special else round(float(acts[j]), 5) for j in keep]
            out.append({"bin_min": bin_min, "bin_max": bin_max, "bin_contains": bin_contains,
                        "tokens": [names[int(ids[j])] for j in keep], "values": values,
                        "qualifying_token_index": keep.index(windows.before)})
    return out


def histogram(data: torch.Tensor, bins: int) -> tuple[list[float], list[int]]:
    """(bar values, bar heights) as SAEDashboard's HistogramData.from_data: `bins` equal bins
    between the data's min and max, values the bin centres (5 decimals), heights the counts."""
    if data.numel() == 0:
        return [], []
    lo, hi = float(data.min()), float(data.max())
    heights = torch.histc(data.float(), bins=bins, min=lo, max=hi).int().tolist()
    width = (hi - lo) / bins
    return [round(lo + width * (j + 0.5), 5) for j in range(bins)], heights


def activation_histogram(counts: torch.Tensor, upper: float) -> tuple[list[float], list[int]]:
    """(bin centres, counts) of the analysis' histogram of non-zero activations ([j, j+1)·upper/H
    per bin), from its first to its last non-empty bin; ([], []) for a dead feature."""
    filled = (counts > 0).nonzero().squeeze(1)
    if filled.numel() == 0:
        return [], []
    lo, hi, width = int(filled[0]), int(filled[-1]), upper / counts.shape[0]
    return [round(width * (j + 0.5), 5) for j in range(lo, hi + 1)], [int(c) for c in counts[lo : hi + 1]]


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in values]


def _choose(analysis, features, top, sort_by) -> list[int]:
    if features is not None and top is not None:
        raise SaeKitError("give either a feature list or --top, not both")
    if isinstance(features, str):
        return parse_feature_list(features, analysis.n_features)
    if features is not None:
        chosen = sorted({int(f) for f in features})
        bad = [f for f in chosen if not 0 <= f < analysis.n_features]
        if bad:
            raise SaeKitError(f"feature {bad[0]} is out of range: the analysis has features 0-{analysis.n_features - 1}")
        return chosen
    chosen = select_features(analysis, min_density=0.0, max_density=1.0, sort_by=sort_by, limit=top)
    chosen = chosen if top is not None else sorted(chosen)
    if not chosen:
        raise SaeKitError("no feature of the analysis ever fired: nothing to export")
    return chosen


def _identifiers(analysis, store: ActivationStore, autoencoder, opts: NeuronpediaOptions) -> dict:
    """model id, layer, source set and source id, hook name and creator id, with their defaults."""
    model_name = (store.manifest.get("model") or {}).get("name") or str(analysis.model)
    model_id = opts.model_id or re.sub(r"[^a-z0-9.-]+", "-", Path(model_name).name.lower()).strip("-")
    hook_alias = getattr(autoencoder.cfg, "hook", None) or analysis.hook
    numbers = re.findall(r"\d+", str(analysis.hook)) or re.findall(r"\d+", str(hook_alias))
    layer = opts.layer if opts.layer is not None else (int(numbers[-1]) if numbers else 0)
    source_set = opts.source_set or f"sae-kit-{getattr(autoencoder, 'arch', 'sae')}-{autoencoder.d_sae}"
    source_id = f"{layer}-{source_set}" + (f"__{opts.sae_id_suffix}" if opts.sae_id_suffix else "")
    kind = str(hook_alias).split(".")[0]
    hook_point = opts.hook_point or HOOK_POINTS.get(kind, "hook_resid_post")
    creator_id = opts.creator_id or os.environ.get("DEFAULT_CREATOR_ID")
    if not creator_id:
        print(f"neuronpedia: no --creator-id and no DEFAULT_CREATOR_ID; using SAEDashboard's fallback "
              f"{FALLBACK_CREATOR_ID}", file=sys.stderr)
        creator_id = FALLBACK_CREATOR_ID
    return {"model_id": model_id, "layer": layer, "source_set": source_set, "source_id": source_id,
            "hook_name": f"blocks.{layer}.{hook_point}", "creator_id": creator_id}


def _unembedding(analysis, lm, opts: NeuronpediaOptions, autoencoder):
    """The direct path to the logits for the logit histogram, or None (not asked, no model, wrong width)."""
    if not opts.logits_histogram:
        return None
    if lm is None:
        if not analysis.model:
            return None
        lm = load_model(analysis.model, device="cpu")
    unembed = unembedding(lm.model)
    if unembed.W_U.shape[1] != autoencoder.d_in:
        print("neuronpedia: the autoencoder's width differs from the model's; no logit histogram", file=sys.stderr)
        return None
    return unembed


def _prompt_counts(analysis, store: ActivationStore) -> tuple[int, int]:
    """(n_prompts_total, n_tokens_in_prompt): contexts analysed and tokens per context."""
    per = store.context_len - (1 if analysis.info.get("skip_bos", True) and store.manifest.get("prepend_bos", True) else 0)
    return -(-analysis.n_tokens // max(per, 1)), store.context_len


def _dataset(store: ActivationStore) -> str:
    corpus = store.manifest.get("corpus") or {}
    return str(corpus.get("dataset", "")) if isinstance(corpus, dict) else str(corpus)


def _explainer_name(analysis_dir) -> str:
    """The explainer model recorded in A/explanations.json ('' if none)."""
    path = Path(analysis_dir) / EXPLANATIONS_FILE
    try:
        return str(json.loads(path.read_text()).get("explainer", {}).get("model", ""))
    except (OSError, ValueError):
        return ""


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, compresslevel=5, mtime=0), fsync=False)


def _write_source_files(source_dir: Path, analysis, store: ActivationStore, ids: dict, opts: NeuronpediaOptions,
                        created: str) -> None:
    """release.jsonl, model.jsonl, sourceset.jsonl and source.jsonl (one row each)."""
    release = opts.release_id or ids["source_set"]
    title = opts.release_title or f"sae-kit {analysis.info.get('arch', 'autoencoder')} on {analysis.hook}"
    n_prompts, n_tokens_in_prompt = _prompt_counts(analysis, store)
    layers = int((store.manifest.get("model") or {}).get("n_layers") or 0)
    rows = {
        "release": release_row(name=release, title=title, url=opts.url, creator_name=opts.creator_name,
                               creator_id=ids["creator_id"], created=created),
        "model": model_row(model_id=ids["model_id"], creator_id=ids["creator_id"], layers=layers, created=created),
        "sourceset": sourceset_row(model_id=ids["model_id"], name=ids["source_set"], description=title,
                                   creator_id=ids["creator_id"], creator_name=opts.creator_name, release=release,
                                   created=created),
        "source": source_row(source_id=ids["source_id"], model_id=ids["model_id"], set_name=ids["source_set"],
                             creator_id=ids["creator_id"], hf_repo_id=opts.hf_repo_id,
                             hf_weights_path=opts.hf_weights_path, n_prompts=n_prompts,
                             n_tokens_in_prompt=n_tokens_in_prompt, dataset=_dataset(store), created=created),
    }
    for name, row in rows.items():
        atomic_write_bytes(source_dir / f"{name}.jsonl", (json.dumps(row, ensure_ascii=False) + "\n").encode(),
                           fsync=False)
