"""Plotly figures of the dashboard, as JSON templates that the pages fill and hand to the local plotly.js.

Each figure's layout and trace styling is built once with plotly's graph objects (validated) and
written once into SITE/data/site.js; the pages fill in the data arrays from each feature's
compact record, so no feature carries figure JSON of its own.
"""

from __future__ import annotations

from functools import cache

import plotly.graph_objects as go
import torch

ACCENT = "#e8590c"
"""Highlight colour of activations (orange, as in Anthropic's feature browser)."""
BAND_COLOURS = ("#fde0c5", "#facba6", "#f8b58b", "#f59e72", "#f2855d", "#ef6a4c", "#eb4a40", "#d23641", "#b22a45", "#8f1f48")
"""Histogram bar colours from the lowest band to the highest (the last repeats for more bands)."""
PROMOTED, SUPPRESSED = "#2f9e44", "#c92a2a"
FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)
DENSITY_BINS = 60


def _layout(**extra) -> dict:
    # template "none": plotly's default template adds ~7 kB of styling to every figure's JSON.
    base = dict(template="none", margin=dict(l=48, r=12, t=28, b=40), height=260, font=FONT, plot_bgcolor="white",
                paper_bgcolor="white", bargap=0.05, showlegend=False)
    base.update(extra)
    return base


def _title(text: str) -> dict:
    return dict(text=text, x=0.01, font=dict(size=13))


@cache
def figure_templates() -> dict[str, dict]:
    """{kind: validated plotly JSON of an empty figure}: histogram, logits, density, map."""
    histogram = go.Figure(go.Bar(x=[0.0], y=[0], hovertemplate="activation %{x:.3g}<br>%{y} tokens<extra></extra>",
                                 marker=dict(line=dict(width=0))))
    histogram.update_layout(**_layout(title=_title("Activation histogram (non-zero)"),
                                      xaxis=dict(title="activation", gridcolor="#eee", zeroline=False),
                                      yaxis=dict(title="tokens", gridcolor="#eee")))
    logits = go.Figure(go.Bar(x=[0.0], y=["a"], orientation="h", hovertemplate="%{y}<br>logit %{x:+.3f} per unit<extra></extra>"))
    logits.update_layout(**_layout(height=380, margin=dict(l=96, r=12, t=28, b=40), title=_title("Logit effect per unit activation"),
                                   xaxis=dict(title="Δ logit", gridcolor="#eee", zeroline=True, zerolinecolor="#999"),
                                   yaxis=dict(autorange="reversed", tickfont=dict(family="ui-monospace, monospace"))))
    density = go.Figure(go.Bar(x=[0.0], y=[0], marker_color=ACCENT, hovertemplate="log10 density %{x:.2f}<br>%{y} features<extra></extra>"))
    density.update_layout(**_layout(height=240, title=_title("Feature density (log10 fraction of tokens; dead features left out)"),
                                    xaxis=dict(title="log10 density", gridcolor="#eee"), yaxis=dict(title="features", gridcolor="#eee")))
    # The map's trace type is chosen by the page: scattergl where WebGL exists, else scatter (SVG).
    feature_map = go.Figure(go.Scattergl(
        x=[0.0], y=[0.0], mode="markers", hovertemplate="%{hovertext}<extra></extra>",
        marker=dict(size=4, opacity=0.75, colorscale="Viridis", showscale=True,
                    colorbar=dict(title=dict(text="log10 density"), thickness=12))))
    feature_map.update_layout(**_layout(height=720, margin=dict(l=40, r=12, t=36, b=40), hovermode="closest",
                                        title=_title("Decoder directions, PCA (each point a feature; click to open it)"),
                                        xaxis=dict(title="PC 1", gridcolor="#eee", zeroline=False),
                                        yaxis=dict(title="PC 2", gridcolor="#eee", zeroline=False), dragmode="zoom"))
    return {name: fig.to_plotly_json() for name, fig in
            (("histogram", histogram), ("logits", logits), ("density", density), ("map", feature_map))}


def density_bins(density: torch.Tensor) -> dict:
    """Histogram of log10 density over the live features: {"x": bin centres, "y": counts, "width"}."""
    live = density[density > 0].double().log10()
    if not live.numel():
        return {"x": [], "y": [], "width": 1.0}
    lo, hi = float(live.min()), float(live.max())
    width = max(hi - lo, 1e-6) / DENSITY_BINS
    counts = torch.histc(live, bins=DENSITY_BINS, min=lo, max=lo + width * DENSITY_BINS)
    return {"x": [round(lo + (j + 0.5) * width, 4) for j in range(DENSITY_BINS)], "y": counts.long().tolist(),
            "width": round(width, 6)}
