"""The data behind each page: plain JSON-able dicts built from an analysis and its windows.

Pages are static HTML files that embed their data as JSON and render it with the site's own
JavaScript (site.js): no server, no fetch (file:// forbids it), no CDN.
"""

from __future__ import annotations

import json
import math
from string import Template

import torch

from sae_kit.analysis.examples import ExampleWindows
from sae_kit.dashboard.figures import density_figure, histogram_figure, logit_figure

LABEL_TOKENS = 4
"""Distinct top-example tokens shown as a feature's label in the index and prompt view."""


def embed_json(payload) -> str:
    """JSON safe inside <script type="application/json">: '<', '>' and '&' are escaped, so no
    token text can close the script element or start markup."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(template: str, **values: str) -> str:
    """Fill a page template ($name placeholders; every value already escaped by the caller)."""
    return Template(template).substitute(**values)


def rounded(values: torch.Tensor, maximum: float) -> list[float]:
    """Values rounded to ~4 significant digits of the feature's scale (smaller JSON, same picture)."""
    decimals = max(0, 3 - math.floor(math.log10(maximum))) if maximum > 0 else 3
    return values.double().round(decimals=decimals).tolist()


def examples_json(windows: ExampleWindows, row: int, slots: range, names: dict[int, str], maximum: float) -> list[dict]:
    """The examples of feature row `row` in `slots`: tokens trimmed to the example's context."""
    centers = windows.centers[row, slots.start : slots.stop].tolist()
    tokens = windows.tokens[row, slots.start : slots.stop].tolist()
    acts = rounded(torch.nan_to_num(windows.activations[row, slots.start : slots.stop]), maximum)
    contexts = windows.contexts[row, slots.start : slots.stop].tolist()
    positions = windows.positions[row, slots.start : slots.stop].tolist()
    out = []
    for j, centre in enumerate(centers):
        if centre < 0:
            continue
        present = [w for w, token in enumerate(tokens[j]) if token >= 0]
        first, last = present[0], present[-1] + 1
        out.append({"t": [names[i] for i in tokens[j][first:last]], "a": acts[j][first:last], "c": windows.before - first,
                    "i": centre, "ctx": contexts[j], "pos": positions[j]})
    return out


def feature_label(windows: ExampleWindows, row: int, names: dict[int, str]) -> list[str]:
    """Distinct tokens of the top examples (the example token itself), strongest first."""
    centre = windows.tokens[row, : windows.top_k, windows.before].tolist()
    label: list[str] = []
    for token in centre:
        if token >= 0 and names[token] not in label:
            label.append(names[token])
        if len(label) == LABEL_TOKENS:
            break
    return label


def logit_lists(analysis, feature: int, names: dict[int, str]) -> tuple[list, list]:
    if analysis.promoted_ids is None:
        return [], []
    promoted = [(names[int(i)], float(v)) for i, v in zip(analysis.promoted_ids[feature], analysis.promoted_logits[feature])]
    suppressed = [(names[int(i)], float(v)) for i, v in zip(analysis.suppressed_ids[feature], analysis.suppressed_logits[feature])]
    return promoted, suppressed


def feature_page_data(analysis, windows: ExampleWindows, row: int, names: dict[int, str],
                      neighbours: tuple[int | None, int | None]) -> dict:
    """Everything one feature page shows."""
    f = int(windows.features[row])
    k, Q = windows.top_k, analysis.n_quantiles
    maximum = float(analysis.max_activation[f])
    promoted, suppressed = logit_lists(analysis, f, names)
    bands = []
    for q in reversed(range(Q)):  # highest band first
        slots = range(k * (1 + q), k * (2 + q))
        bands.append({
            "q": q,
            "lo": float(analysis.band_lower[f, q]),
            "hi": float(analysis.band_upper[f, q]),
            "count": int(analysis.band_counts[f, q]),
            "examples": examples_json(windows, row, slots, names, maximum),
        })
    return {
        "id": f,
        "prev": neighbours[0],
        "next": neighbours[1],
        "n_features": analysis.n_features,
        "density": float(analysis.density[f]),
        "fires": int(analysis.fire_count[f]),
        "n_tokens": analysis.n_tokens,
        "max": maximum,
        "mean": float(analysis.mean_nonzero[f]),
        "label": feature_label(windows, row, names),
        "hist": histogram_figure(analysis.hist_counts[f], float(analysis.hist_upper[f]), maximum, analysis.band_lower[f]),
        "logits": logit_figure(promoted, suppressed) if promoted else None,
        "promoted": promoted,
        "suppressed": suppressed,
        "top": examples_json(windows, row, range(k), names, maximum),
        "bands": bands,
    }


def index_row(analysis, windows: ExampleWindows, row: int, names: dict[int, str]) -> dict:
    """One row of the index table: feature `windows.features[row]`."""
    f = int(windows.features[row])
    promoted, _ = logit_lists(analysis, f, names)
    maximum = float(analysis.max_activation[f])
    H = analysis.hist_counts.shape[1]
    width = float(analysis.hist_upper[f]) / H
    shown = max(1, math.ceil(maximum / width)) if maximum > 0 else 1
    return {
        "id": f,
        "density": float(analysis.density[f]),
        "max": maximum,
        "mean": float(analysis.mean_nonzero[f]),
        "label": feature_label(windows, row, names),
        "promoted": [text for text, _ in promoted[:3]],
        "hist": analysis.hist_counts[f, : min(H, shown)].tolist(),
    }


def index_data(analysis, rows: list[dict], site_info: dict) -> dict:
    """The index: one row per built feature, the density overview and the analysis summary."""
    density = analysis.density
    return {
        "rows": rows,
        "summary": {
            **site_info,
            "n_features": analysis.n_features,
            "dead": int((analysis.fire_count == 0).sum()),
            "dense": int((density > 0.1).sum()),
            "n_tokens": analysis.n_tokens,
        },
        "density": density_figure(density),
    }
