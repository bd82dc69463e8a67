"""Plotly figures of the dashboard, as JSON specs that the pages hand to the local plotly.js.

Each figure's layout and trace styling is built once with plotly's graph objects (validated);
per feature only the data arrays are filled in, which keeps a thousand pages fast to write.
"""

from __future__ import annotations

import math
from functools import lru_cache

import plotly.graph_objects as go
import torch

ACCENT = "#e8590c"
"""Highlight colour of activations (orange, as in Anthropic's feature browser)."""
BAND_COLOURS = ("#fde0c5", "#facba6", "#f8b58b", "#f59e72", "#f2855d", "#ef6a4c", "#eb4a40", "#d23641", "#b22a45", "#8f1f48")
"""Histogram bar colours from the lowest band to the highest (cycled for other band counts)."""
PROMOTED, SUPPRESSED = "#2f9e44", "#c92a2a"
FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)


def _layout(**extra) -> dict:
    # template "none": plotly's default template adds ~7 kB of styling to every figure's JSON.
    base = dict(template="none", margin=dict(l=48, r=12, t=28, b=40), height=260, font=FONT, plot_bgcolor="white",
                paper_bgcolor="white", bargap=0.05, showlegend=False)
    base.update(extra)
    return base


@lru_cache(maxsize=None)
def _template(kind: str) -> dict:
    """The validated plotly JSON of an empty figure of each kind."""
    if kind == "histogram":
        fig = go.Figure(go.Bar(x=[0.0], y=[0], width=[1.0], hovertemplate="activation %{x:.3g}<br>%{y} tokens<extra></extra>"))
        fig.update_layout(**_layout(title=dict(text="Activation histogram (non-zero)", x=0.01, font=dict(size=13)),
                                    xaxis=dict(title="activation", gridcolor="#eee", zeroline=False),
                                    yaxis=dict(title="tokens", gridcolor="#eee")))
    elif kind == "logits":
        fig = go.Figure(go.Bar(x=[0.0], y=["a"], orientation="h",
                               hovertemplate="%{y}<br>logit %{x:+.3f} per unit<extra></extra>"))
        fig.update_layout(**_layout(height=380, margin=dict(l=96, r=12, t=28, b=40),
                                    title=dict(text="Logit effect per unit activation", x=0.01, font=dict(size=13)),
                                    xaxis=dict(title="Δ logit", gridcolor="#eee", zeroline=True, zerolinecolor="#999"),
                                    yaxis=dict(autorange="reversed", tickfont=dict(family="ui-monospace, monospace"))))
    elif kind == "density":
        fig = go.Figure(go.Histogram(x=[0.0], nbinsx=60, marker_color=ACCENT,
                                     hovertemplate="log10 density %{x}<br>%{y} features<extra></extra>"))
        fig.update_layout(**_layout(height=240, title=dict(text="Feature density (log10 fraction of tokens; dead features left out)",
                                                          x=0.01, font=dict(size=13)),
                                    xaxis=dict(title="log10 density", gridcolor="#eee"),
                                    yaxis=dict(title="features", gridcolor="#eee")))
    else:
        raise ValueError(kind)
    return fig.to_plotly_json()


def _filled(kind: str, **trace) -> dict:
    """The template with its trace's data replaced (the layout dict is shared, never mutated)."""
    spec = _template(kind)
    return {"data": [{**spec["data"][0], **trace}], "layout": spec["layout"]}


def histogram_figure(counts: torch.Tensor, upper: float, maximum: float, band_lower: torch.Tensor) -> dict:
    """Histogram of a feature's non-zero activations: counts [H] over [0, upper), drawn up to the
    maximum; bars coloured by interval band (band_lower [Q] gives the bands' lower edges)."""
    H = counts.shape[0]
    width = upper / H if upper > 0 else 1.0
    last = min(H, max(1, math.ceil(maximum / width))) if maximum > 0 else 1
    centres = [(j + 0.5) * width for j in range(last)]
    lows = band_lower.tolist()
    colours = [BAND_COLOURS[min(len(BAND_COLOURS) - 1, sum(1 for lo in lows if c >= lo) - 1) % len(BAND_COLOURS)]
               for c in centres]
    return _filled("histogram", x=[round(c, 6) for c in centres], y=counts[:last].tolist(),
                   width=[width] * last, marker=dict(color=colours, line=dict(width=0)))


def logit_figure(promoted: list[tuple[str, float]], suppressed: list[tuple[str, float]]) -> dict:
    """Horizontal bars: promoted tokens (green, top) then suppressed (red)."""
    rows = promoted + suppressed[::-1]
    labels = [text.replace(" ", "·") or "∅" for text, _ in rows]  # spaces visible on the axis
    # Plotly merges equal category labels: keep them distinct with a zero-width suffix.
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = label + "\u200b" * (seen[label] - 1)
    values = [round(v, 4) for _, v in rows]
    colours = [PROMOTED] * len(promoted) + [SUPPRESSED] * len(suppressed)
    return _filled("logits", x=values, y=labels, marker=dict(color=colours))


def density_figure(density: torch.Tensor) -> dict:
    """Histogram of log10 density over the live features of the analysis."""
    live = density[density > 0].double().log10()
    return _filled("density", x=[round(v, 4) for v in live.tolist()])
