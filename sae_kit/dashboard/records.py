"""The data of the site's files: one record per feature (its shard) and the index's columns.

All of it is plain JSON-able dicts and lists, built from an analysis (and, for feature records,
the example windows of a block of features); token ids are written as the site's token codes
(`encoding.TokenCodes`) and activations as 2-digit codes against a per-feature scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sae_kit.analysis.examples import ExampleWindows
from sae_kit.analysis.neighbours import Neighbours
from sae_kit.dashboard.encoding import (
    ALPHABET,
    BASE,
    EXAMPLE_SEP,
    MAX_CODE_DIGITS,
    TokenCodes,
    encode_windows,
)
from sae_kit.harvest.reader import ActivationStore

LABEL_TOKENS = 4
"""Distinct top-example tokens shown as a feature's label (index, map, neighbours, prompt view)."""
INDEX_PROMOTED = 3
"""Promoted tokens listed in the index."""
SPARK_BINS = 16
"""Columns of the index's histogram sparkline."""
NEIGHBOUR_EXPLANATION_CHARS = 80


def sig(x: float, digits: int = 4) -> float:
    """x rounded to `digits` significant digits (shorter JSON, the same picture)."""
    return float(f"{x:.{digits}g}") if math.isfinite(x) else 0.0


def sig_list(values: torch.Tensor, digits: int = 4) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


# ----------------------------------------------------------------------------- inputs


def explanation_scores(entry: dict) -> dict[str, float]:
    """{"detection": balanced accuracy, "fuzzing": …} of an explanations.json entry (those present)."""
    out = {}
    for name in ("detection", "fuzzing"):
        score = entry.get(name)
        if isinstance(score, dict) and isinstance(score.get("balanced_accuracy"), (int, float)):
            out[name] = round(float(score["balanced_accuracy"]), 3)
    return out


def store_token_codes(store: ActivationStore, extra: list[torch.Tensor], vocab_size: int = 0) -> TokenCodes:
    """Token codes ranked by how often each token occurs in the store (ids in `extra`, e.g. the
    logit-effect tokens, are covered even if the store never holds them)."""
    counts = torch.zeros(0, dtype=torch.long)
    for s in range(len(store.shards)):
        start, stop = int(store.shard_starts[s]), int(store.shard_starts[s + 1])
        tokens = store.gather(None, torch.arange(start, stop))["tokens"]
        shard_counts = torch.bincount(tokens, minlength=len(counts))
        shard_counts[: len(counts)] += counts
        counts = shard_counts
    largest = max([vocab_size - 1, len(counts) - 1] + [int(t.max()) for t in extra if t.numel()])
    counts = torch.cat([counts, torch.zeros(largest + 1 - len(counts), dtype=torch.long)])
    return TokenCodes.from_counts(counts.numpy())


def top_token_labels(analysis, store: ActivationStore, features: torch.Tensor, block: int = 65_536) -> torch.Tensor:
    """[n, LABEL_TOKENS] int64: the distinct tokens of each feature's top examples, strongest first (−1 pads)."""
    out = torch.full((len(features), LABEL_TOKENS), -1, dtype=torch.long)
    k = analysis.top_k
    before = torch.ones(k, k, dtype=torch.bool).tril(-1)  # [j, i]: i comes before j
    for start in range(0, len(features), block):  # [block, k, k] comparisons at a time
        top = analysis.top_indices[features[start : start + block]]  # [b, k]
        tokens = torch.full(top.shape, -1, dtype=torch.long)
        filled = top >= 0
        if filled.any():
            tokens[filled] = store.gather(None, top[filled])["tokens"]
        repeated = ((tokens[:, :, None] == tokens[:, None, :]) & before).any(-1)
        first = (tokens >= 0) & ~repeated  # a token counts at its first occurrence along the row
        order = torch.argsort((~first).to(torch.int8), dim=1, stable=True)[:, :LABEL_TOKENS]
        labels = torch.where(first.gather(1, order), tokens.gather(1, order), -1)
        out[start : start + block, : labels.shape[1]] = labels
    return out


def encode_rows(codes: TokenCodes, ids: torch.Tensor) -> str:
    """The token codes of each row of ids [n, m] (−1 skipped), rows separated by ' '."""
    ids = ids.numpy()
    ranks = codes.rank[np.where(ids >= 0, ids, 0)]
    pieces = codes.code[ranks].reshape(len(ids), -1)
    mask = ((np.arange(MAX_CODE_DIGITS) < codes.length[ranks][..., None]) & (ids >= 0)[..., None]).reshape(len(ids), -1)
    pieces = np.concatenate([pieces, np.full((len(ids), 1), ord(EXAMPLE_SEP), np.uint8)], 1)
    mask = np.concatenate([mask, np.ones((len(ids), 1), bool)], 1)
    return pieces[mask].tobytes().decode("ascii")[:-1]


def sparklines(analysis, features: torch.Tensor) -> str:
    """Each feature's activation histogram in ≤ 16 columns up to its maximum, one digit per
    column (√(count / peak) · 90), rows separated by ' '."""
    counts = analysis.hist_counts[features].double()  # [n, H]
    H = counts.shape[1]
    bins = min(SPARK_BINS, H)
    counts = counts.reshape(len(features), bins, H // bins).sum(-1)
    upper = analysis.hist_upper[features].double().clamp_min(1e-30)
    shown = torch.ceil(analysis.max_activation[features].double() / upper * bins).clamp(1, bins).long()
    peak = counts.max(1, keepdim=True).values.clamp_min(1)
    levels = torch.round((counts / peak).sqrt() * (BASE - 1)).long().numpy()
    digits = np.frombuffer(ALPHABET.encode("ascii"), np.uint8)[levels]
    mask = np.arange(bins)[None, :] < shown.numpy()[:, None]
    digits = np.concatenate([digits, np.full((len(features), 1), ord(EXAMPLE_SEP), np.uint8)], 1)
    mask = np.concatenate([mask, np.ones((len(features), 1), bool)], 1)
    return digits[mask].tobytes().decode("ascii")[:-1]


# ----------------------------------------------------------------------------- the index


def index_columns(analysis, built: torch.Tensor, labels: torch.Tensor, codes: TokenCodes,
                  explanations: dict[int, dict]) -> dict:
    """The index's columns for the features `built` [n] (in the index's order); labels [n, 4]."""
    ids = built.tolist()
    columns = {
        "id_deltas": torch.diff(built, prepend=torch.zeros(1, dtype=torch.long)).tolist(),
        "fires": analysis.fire_count[built].tolist(),
        "max": sig_list(analysis.max_activation[built]),
        "mean": sig_list(analysis.mean_nonzero[built]),
        "labels": encode_rows(codes, labels),
        "spark": sparklines(analysis, built),
    }
    if analysis.promoted_ids is not None:
        columns["promoted"] = encode_rows(codes, analysis.promoted_ids[built, :INDEX_PROMOTED])
    if explanations:
        entries = [explanations.get(f, {}) for f in ids]
        columns["explanation"] = [str(e.get("explanation", "")) for e in entries]
        scores = [explanation_scores(e) for e in entries]
        for name in ("detection", "fuzzing"):
            columns[name] = [s.get(name) for s in scores]
    return columns


# ----------------------------------------------------------------------------- feature records


def window_scale(windows: ExampleWindows) -> torch.Tensor:
    """[S] the largest |activation| in each feature's windows (the activation codes' full scale)."""
    a = torch.nan_to_num(windows.activations, nan=0.0).abs().flatten(1)
    return a.max(1).values.clamp_min(1e-12) if a.shape[1] else torch.ones(len(windows.features))


def feature_records(analysis, windows: ExampleWindows, codes: TokenCodes, *, position: torch.Tensor, built: list[int],
                    neighbours: Neighbours, labels: torch.Tensor, explanations: dict[int, dict], context_width: int,
                    position_width: int) -> list[dict]:
    """One record per feature of `windows`: everything its page shows (the site's JS decodes it).

    position [F]: each feature's place in the site's order `built` (prev / next; row of
    `neighbours`); labels [F, 4]: label token ids of every feature a neighbour list can name."""
    scale = window_scale(windows)
    tokens, acts, where = encode_windows(windows.tokens, windows.activations, scale, codes, windows.before,
                                         windows.contexts, windows.positions, windows.top_k, context_width,
                                         position_width)
    H = analysis.hist_counts.shape[1]
    records = []
    for row, f in enumerate(windows.features.tolist()):
        maximum = float(analysis.max_activation[f])
        width = float(analysis.hist_upper[f]) / H
        shown = min(H, max(1, math.ceil(maximum / width))) if maximum > 0 and width > 0 else 1
        at = int(position[f])
        record = {
            "id": f,
            "prev": built[at - 1] if at > 0 else None,
            "next": built[at + 1] if at + 1 < len(built) else None,
            "fires": int(analysis.fire_count[f]),
            "max": sig(maximum, 6),
            "mean": sig(float(analysis.mean_nonzero[f])),
            "scale": sig(float(scale[row]), 6),
            "hist": analysis.hist_counts[f, :shown].tolist(),
            "hist_upper": sig(float(analysis.hist_upper[f]), 6),
            "bands": [[sig(float(lo)), sig(float(hi)), int(n)] for lo, hi, n in
                      zip(analysis.band_lower[f], analysis.band_upper[f], analysis.band_counts[f])],
            "tokens": tokens[row],
            "acts": acts[row],
            "where": where[row],
        }
        if analysis.promoted_ids is not None:
            record.update(promoted=codes.encode(analysis.promoted_ids[f]), promoted_logits=sig_list(analysis.promoted_logits[f], 3),
                          suppressed=codes.encode(analysis.suppressed_ids[f]),
                          suppressed_logits=sig_list(analysis.suppressed_logits[f], 3))
        record.update(_neighbour_fields(neighbours, at, codes, labels, explanations))
        if f in explanations:
            record["explanation"] = str(explanations[f].get("explanation", ""))
            record["scores"] = {name: explanations[f][name] for name in ("detection", "fuzzing")
                                if isinstance(explanations[f].get(name), dict)}
        records.append(record)
    return records


def _neighbour_fields(neighbours: Neighbours, row: int, codes: TokenCodes, labels: torch.Tensor,
                      explanations: dict[int, dict]) -> dict:
    ids = [i for i in neighbours.indices[row].tolist() if i >= 0]
    out = {"neighbours": ids, "cosines": [round(c, 3) for c in neighbours.cosines[row, : len(ids)].tolist()],
           "neighbour_labels": encode_rows(codes, labels[ids]) if ids else ""}
    if explanations:
        out["neighbour_explanations"] = [str(explanations.get(i, {}).get("explanation", ""))[:NEIGHBOUR_EXPLANATION_CHARS]
                                         for i in ids]
    return out
