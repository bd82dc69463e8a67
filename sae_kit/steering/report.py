"""Reports of steering experiments: side by side in the terminal, and `report.md` + `report.html`.

The HTML page works offline: plotly.js is written next to it (``plotly_js="directory"``, the
default), inlined (``"inline"``), or taken from a path the caller provides (a site that already
ships it), never fetched from a CDN.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import textwrap
from pathlib import Path

from sae_kit.artifacts import PLOTLY_FILE, atomic_write_json, atomic_write_text, write_plotly_js
from sae_kit.steering.sweep import SteeringResult

METRICS = (
    ("kl_next", "KL next"),
    ("kl_continuation", "KL cont."),
    ("promoted_shift_next", "Δlogp promoted next"),
    ("promoted_shift_continuation", "Δlogp promoted cont."),
)


def _one_line(text: str) -> str:
    """Newlines shown as ↵ so a generation stays on one table row."""
    return text.replace("\r", "").replace("\n", "↵ ")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _activation_note(result: SteeringResult, value: float) -> str:
    if result.max_activation:
        return f"{value:.3g} ({value / result.max_activation:.2f}× max)"
    return f"{value:.3g}"


# ----------------------------------------------------------------------------- terminal


def format_side_by_side(result: SteeringResult, width: int | None = None) -> str:
    """Baseline and steered texts in two columns per condition (one row per value in a sweep)."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    lines = []
    for pr in result.prompts:
        act = _activation_note(result, pr.feature_activation_prompt)
        lines.append(f"prompt: {pr.prompt!r}  (feature {result.primary_feature} on the prompt: max {act})")
        if result.is_sweep:
            text_width = max(20, width - 36)
            lines.append(f"  {'baseline':>14}                    {_clip(pr.baseline, text_width)}")
            for condition, out in zip(result.conditions, pr.outcomes):
                dose = f"{condition.dose:g}{'x' if result.dose_unit == '× max activation' else ''}"
                lines.append(f"  {dose:>14}  KL {out.kl_continuation:7.3f} nats  {_clip(out.text, text_width)}")
        else:
            col = max(20, (width - 3) // 2)
            for condition, out in zip(result.conditions, pr.outcomes):
                left = textwrap.wrap(_one_line(pr.baseline) or "(nothing)", col) or [""]
                right = textwrap.wrap(_one_line(out.text) or "(nothing)", col) or [""]
                lines.append(f"{'baseline':<{col}} │ {condition.label} (KL next {out.kl_next:.3f}, "
                             f"cont. {out.kl_continuation:.3f} nats)")
                lines.append(f"{'─' * col}─┼─{'─' * col}")
                for i in range(max(len(left), len(right))):
                    a = left[i] if i < len(left) else ""
                    b = right[i] if i < len(right) else ""
                    lines.append(f"{a:<{col}} │ {b}")
        lines.append("")
    return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    text = _one_line(text)
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------- figure


def dose_response_figure(result: SteeringResult):
    """Plotly figure: KL from baseline and promoted-token log-prob shift against the dose
    (sweep), or per prompt and condition (otherwise). Means over prompts are the bold lines."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "KL(baseline ‖ steered) of the next token, nats",
        f"Δ log p of feature {result.primary_feature}'s top promoted tokens, nats",
    ))
    if result.is_sweep:
        x = [c.dose for c in result.conditions]
        for col, (cont, nxt) in enumerate((("kl_continuation", "kl_next"),
                                            ("promoted_shift_continuation", "promoted_shift_next")), 1):
            for i, pr in enumerate(result.prompts):
                fig.add_trace(go.Scatter(
                    x=x, y=[getattr(o, cont) for o in pr.outcomes], mode="lines+markers", opacity=0.35,
                    line={"width": 1, "color": "#888"}, name="one prompt (continuation)",
                    legendgroup="prompts", showlegend=col == 1 and i == 0,
                    hovertext=[f"{pr.prompt[:60]}<br>{_one_line(o.text)[:80]}" for o in pr.outcomes],
                ), row=1, col=col)
            for key, name, dash in ((cont, "mean: along the baseline continuation", "solid"),
                                    (nxt, "mean: right after the prompt", "dash")):
                fig.add_trace(go.Scatter(
                    x=x, y=[_mean(getattr(pr.outcomes[j], key) for pr in result.prompts) for j in range(len(x))],
                    mode="lines+markers", line={"width": 3, "dash": dash,
                                                "color": "#1f77b4" if dash == "solid" else "#ff7f0e"},
                    name=name, legendgroup=name, showlegend=col == 1,
                ), row=1, col=col)
            fig.update_xaxes(title_text=f"value of feature {result.primary_feature} ({result.dose_unit})",
                             row=1, col=col)
    else:
        for j, condition in enumerate(result.conditions):
            names = [f"prompt {i + 1}" for i in range(len(result.prompts))]
            for col, key in ((1, "kl_continuation"), (2, "promoted_shift_continuation")):
                fig.add_trace(go.Bar(x=names, y=[getattr(pr.outcomes[j], key) for pr in result.prompts],
                                     name=condition.label, legendgroup=condition.label, showlegend=col == 1),
                              row=1, col=col)
    fig.update_layout(height=430, margin={"t": 60, "b": 50, "l": 50, "r": 20}, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    return fig


# ----------------------------------------------------------------------------- files


def write_report(result: SteeringResult, out_dir: str | Path, plotly_js: str = "directory") -> dict[str, Path]:
    """Write report.md, report.html and results.json into out_dir; returns their paths.

    plotly_js: 'directory' (write plotly.min.js beside the page), 'inline' (inside the page),
    or a relative URL of a plotly.min.js the caller ships (e.g. '../plotly.min.js').
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "json": out / "results.json"}
    atomic_write_json(paths["json"], result.to_dict(), fsync=False)
    atomic_write_text(paths["markdown"], render_markdown(result))
    if plotly_js == "directory":
        paths["plotly"] = write_plotly_js(out)
        script = f'<script src="{PLOTLY_FILE}"></script>'
    elif plotly_js == "inline":
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"
    else:
        script = f'<script src="{html.escape(plotly_js)}"></script>'
    atomic_write_text(paths["html"], render_html(result, script))
    return paths


def _title(result: SteeringResult) -> str:
    if result.is_sweep:
        return f"Steering sweep: feature {result.primary_feature}"
    return "Steering: " + "; ".join(c.label for c in result.conditions)


def _header_facts(result: SteeringResult) -> list[str]:
    s = result.settings
    gen = s.get("generation", {})
    decoding = "greedy" if not gen.get("temperature") else f"sampling T={gen['temperature']} top_p={gen.get('top_p')}"
    peak = f"{result.max_activation:.4g}" if result.max_activation is not None else "unknown (no analysis)"
    promoted = ", ".join(repr(t) for _, t in result.promoted) or "none"
    return [
        f"Model `{s.get('model_name')}` (`{s.get('model')}`), hook `{s.get('hook')}` → `{s.get('hook_module')}`"
        + (f" (steering its target `{s['steered_module']}`)" if s.get("steered_module") else "") + ", "
        f"SAE {s.get('sae', {}).get('arch')} with {s.get('sae', {}).get('d_sae')} features"
        + (f" (run `{s['run']}`)." if s.get("run") else "."),
        f"Feature {result.primary_feature}: max activation over the store {peak}; top promoted tokens: {promoted}.",
        f"Generation: {decoding}, seed {gen.get('seed')}, {gen.get('max_new_tokens')} new tokens, "
        f"steering at {gen.get('positions')} positions{', chat template' if gen.get('chat') else ''}. "
        "Clamping keeps the SAE error term: x' = x + (c − z_i)·W_dec,i (Templeton et al. 2024).",
        "Metrics compare with the baseline on the baseline's own tokens: KL(p_base ‖ p_steered) right after the "
        "prompt (next) and averaged along the baseline continuation (cont.); Δlogp = mean change in log-probability "
        "of the promoted tokens. All in nats.",
    ]


def render_markdown(result: SteeringResult) -> str:
    """The report as markdown: facts, how to reproduce, the dose–response table, per-prompt texts."""
    cell = lambda text: _one_line(text).replace("|", "\\|") or "(nothing)"  # noqa: E731
    lines = [f"# {_title(result)}", ""]
    lines += [f"- {fact}" for fact in _header_facts(result)] + [""]
    lines += ["## Reproduce", "", "```", result.settings.get("command") or "(library call; settings below)", "```",
              "", "<details><summary>settings</summary>", "", "```json",
              json.dumps(result.settings, indent=2, ensure_ascii=False), "```", "", "</details>", ""]
    if result.is_sweep:
        lines += ["## Dose–response (mean over prompts)", "",
                  f"| value ({result.dose_unit}) | " + " | ".join(name for _, name in METRICS) + " |",
                  "|---:|" + "---:|" * len(METRICS)]
        for j, condition in enumerate(result.conditions):
            means = [_mean(getattr(pr.outcomes[j], key) for pr in result.prompts) for key, _ in METRICS]
            lines.append(f"| {condition.dose:g} | " + " | ".join(f"{m:.4f}" for m in means) + " |")
        lines += ["", "The interactive figure is in `report.html`.", ""]
    for i, pr in enumerate(result.prompts, 1):
        lines += [f"## Prompt {i}: {cell(pr.prompt)}", "",
                  f"Feature {result.primary_feature} unsteered: max "
                  f"{_activation_note(result, pr.feature_activation_prompt)} "
                  f"on the prompt ({pr.prompt_tokens} tokens), "
                  f"{_activation_note(result, pr.feature_activation_continuation)} on the baseline continuation.", "",
                  "| condition | KL next | KL cont. | Δlogp promoted | generation |", "|---|---:|---:|---:|---|",
                  f"| **baseline** | | | | {cell(pr.baseline)} |"]
        for condition, out in zip(result.conditions, pr.outcomes):
            lines.append(f"| {cell(condition.label)} | {out.kl_next:.4f} | {out.kl_continuation:.4f} | "
                         f"{out.promoted_shift_continuation:+.4f} | {cell(out.text)} |")
        lines.append("")
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; width: 100%; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { font-family: ui-monospace, monospace; font-size: 90%; width: 55%; }
td.text div { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 12em; overflow-y: auto; }
th { font-size: 90%; }
code { background: #f6f8fa; padding: 0 3px; }
pre { background: #f6f8fa; padding: 0.8em; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.baseline td { background: #f3f7ff; }
"""


def _code_spans(text: str) -> str:
    """Markdown `code` spans of already-escaped text as <code> elements."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)


def render_html(result: SteeringResult, plotly_script: str) -> str:
    """The report as one HTML page (the figure needs `plotly_script` to load plotly.js)."""
    esc = html.escape
    figure = dose_response_figure(result).to_html(full_html=False, include_plotlyjs=False,
                                                  div_id="dose-response", config={"displaylogo": False})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(_title(result))}</title>",
             f"<style>{CSS}</style>{plotly_script}</head><body>", f"<h1>{esc(_title(result))}</h1><ul>"]
    parts += [f"<li>{_code_spans(esc(fact))}</li>" for fact in _header_facts(result)]
    parts += ["</ul>", figure, "<h2>Reproduce</h2>",
              f"<pre>{esc(result.settings.get('command') or '(library call; settings below)')}</pre>",
              "<details><summary>settings</summary><pre>"
              f"{esc(json.dumps(result.settings, indent=2, ensure_ascii=False))}</pre></details>"]
    for i, pr in enumerate(result.prompts, 1):
        parts += [f"<h2>Prompt {i}</h2><pre>{esc(pr.prompt)}</pre>",
                  f"<p>Feature {result.primary_feature} unsteered: max "
                  f"{esc(_activation_note(result, pr.feature_activation_prompt))} on the prompt, "
                  f"{esc(_activation_note(result, pr.feature_activation_continuation))} "
                  "on the baseline continuation.</p>",
                  "<table><tr><th>condition</th>" + "".join(f"<th>{esc(name)}</th>" for _, name in METRICS)
                  + "<th>generation</th></tr>",
                  f"<tr class='baseline'><td><b>baseline</b></td>{'<td></td>' * len(METRICS)}"
                  f"<td class='text'><div>{esc(pr.baseline)}</div></td></tr>"]
        for condition, out in zip(result.conditions, pr.outcomes):
            parts.append(f"<tr><td>{esc(condition.label)}</td>"
                         + "".join(f"<td class='num'>{getattr(out, key):.4f}</td>" for key, _ in METRICS)
                         + f"<td class='text'><div>{esc(out.text)}</div></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
