"""Build the static dashboard site of an analysis::

    SITE/index.html            sortable, searchable table of the features built, density overview
    SITE/features/<id>.html    one page per feature: histogram, logit effects, top examples, bands
    SITE/prompts.html          the prompt view: the features firing on a few texts, token by token
    SITE/assets/               plotly.min.js (written once, from the installed plotly), site.css, site.js
    SITE/site.json             what was built from what

Everything is local: pages open from file:// with no network at all.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.analysis import load_analysis, select_features
from sae_kit.dashboard.pages import embed_json, feature_page_data, index_data, index_row, render
from sae_kit.artifacts import prepare_output_dir
from sae_kit.errors import SaeKitError
from sae_kit.feature_examples import example_windows
from sae_kit.store import ActivationStore
from sae_kit.token_display import display_tokens

FORMAT = "sae-kit-dashboard"
SITE_FILE = "site.json"
ASSETS = ("site.css", "site.js")
PROMPT_TOP = 5
CHUNK = 500
"""Features whose windows are computed at once (memory: about 40 kB per feature)."""


def _template(name: str) -> str:
    return resources.files("sae_kit.dashboard").joinpath(name).read_text(encoding="utf-8")


def build_site(
    analysis_dir: str | Path, out_dir: str | Path, features: list[int] | None = None, top: int | None = None, *,
    sort_by: str = "max_activation", min_density: float = 0.0, max_density: float = 1.0, before: int = 10,
    after: int = 4, prompts: tuple[str, ...] | list[str] = (), prompt_contexts: int = 3, autoencoder=None,
    tokenizer=None, lm=None, overwrite: bool = False, device: str | None = None, progress: bool = True,
) -> Path:
    """Write the site for `analysis_dir` into `out_dir`; returns `out_dir` (open out_dir/index.html).

    Which features get pages: `features` (ids), else the `top` N by `sort_by` among features with
    min_density ≤ density ≤ max_density (see `select_features`), else every feature that fired.
    Windows show `before` tokens before and `after` after each example. The prompt view shows
    the first `prompt_contexts` contexts of the store (no language model needed) and each text
    in `prompts` (the language model is loaded, unless `lm` is given). `autoencoder`,
    `tokenizer`: already loaded objects, else loaded from the analysis' run and model.
    """
    started = time.perf_counter()
    analysis = load_analysis(analysis_dir)
    out = Path(out_dir)
    _check_out(out, overwrite)
    chosen = _choose(analysis, features, top, sort_by, min_density, max_density)
    if autoencoder is None:
        if not analysis.run:
            raise SaeKitError("the analysis records no run directory; pass the autoencoder to build_site")
        from sae_kit.autoencoders import load_autoencoder

        autoencoder = load_autoencoder(analysis.run, device=device)
    if tokenizer is None:
        tokenizer = lm.tokenizer if lm is not None else analysis.load_tokenizer()
    store = ActivationStore(analysis.store)

    prompt_views = _prompt_views(analysis, store, autoencoder, prompts, prompt_contexts, lm, device)
    (out / "features").mkdir(parents=True, exist_ok=True)
    _write_assets(out / "assets")
    page = _template("feature.html")
    names: dict[int, str] = {}
    rows, labels = [], {}
    bar = tqdm(total=len(chosen), desc="pages", unit="page", disable=not progress)
    for start in range(0, len(chosen), CHUNK):  # windows for a chunk of features at a time: bounded memory
        chunk = chosen[start : start + CHUNK]
        windows = example_windows(analysis, chunk, autoencoder=autoencoder, store=store, before=before, after=after)
        ids = [windows.tokens[windows.tokens >= 0]]
        if analysis.promoted_ids is not None:
            ids += [analysis.promoted_ids[chunk].reshape(-1), analysis.suppressed_ids[chunk].reshape(-1)]
        _add_names(names, tokenizer, ids)
        for row, f in enumerate(chunk):
            at = start + row
            neighbours = (chosen[at - 1] if at > 0 else None, chosen[at + 1] if at + 1 < len(chosen) else None)
            data = feature_page_data(analysis, windows, row, names, neighbours)
            _write_text(out / "features" / f"{f}.html", render(page, title=f"Feature {f}", root="../", data=embed_json(data)))
            rows.append(index_row(analysis, windows, row, names))
            labels[f] = rows[-1]["label"]
            bar.update(1)
    bar.close()
    info = {"run": analysis.run, "store": analysis.store, "hook": analysis.hook, "model": analysis.model,
            "analysis": str(Path(analysis_dir).resolve()), "built": len(chosen)}
    _write_text(out / "index.html", render(_template("index.html"), title="Features", root="",
                                           data=embed_json(index_data(analysis, rows, info))))
    _add_names(names, tokenizer, [view["ids"] for view in prompt_views])
    prompt_data = {"prompts": [_prompt_json(view, names, analysis, labels) for view in prompt_views],
                   "built": sorted(labels)}
    _write_text(out / "prompts.html", render(_template("prompts.html"), title="Prompts", root="",
                                             data=embed_json(prompt_data)))
    manifest = {"format": FORMAT, "sae_kit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **info, "features": chosen, "before": before, "after": after,
                "seconds": round(time.perf_counter() - started, 2)}
    _write_text(out / SITE_FILE, json.dumps(manifest, indent=2) + "\n")
    return out


def _add_names(names: dict[int, str], tokenizer, ids: list) -> None:
    """Add the display text of every token id in `ids` (tensors) not yet in `names`."""
    if ids:
        flat = torch.cat([torch.as_tensor(i).reshape(-1) for i in ids]).unique().tolist()
        names.update(display_tokens(tokenizer, [i for i in flat if i not in names]))


def _choose(analysis, features, top, sort_by, min_density, max_density) -> list[int]:
    if features is not None and top is not None:
        raise SaeKitError("give either a feature list or --top, not both")
    if features is not None:
        chosen = sorted({int(f) for f in features})
        bad = [f for f in chosen if not 0 <= f < analysis.n_features]
        if bad:
            raise SaeKitError(f"feature {bad[0]} is out of range: the analysis has features 0-{analysis.n_features - 1}")
    else:
        chosen = select_features(analysis, min_density=min_density, max_density=max_density, sort_by=sort_by, limit=top)
        if min_density <= 0 and max_density >= 1 and top is None:
            chosen = sorted(chosen)
    if not chosen:
        raise SaeKitError("no feature matches the selection (every feature is dead, or the density range is empty)")
    return chosen


def _check_out(out: Path, overwrite: bool) -> None:
    prepare_output_dir(out, SITE_FILE, "a dashboard", overwrite, clear=("features",))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_assets(assets: Path) -> None:
    """plotly.js from the installed plotly package (never a CDN), and the site's CSS and JS."""
    import plotly.offline

    assets.mkdir(parents=True, exist_ok=True)
    _write_text(assets / "plotly.min.js", plotly.offline.get_plotlyjs())
    for name in ASSETS:
        _write_text(assets / name, _template(name))


# ----------------------------------------------------------------------------- prompt view


@torch.no_grad()
def _prompt_views(analysis, store: ActivationStore, autoencoder, prompts, n_contexts: int, lm, device) -> list[dict]:
    """Latents z [T, d_sae] of the first stored contexts (re-encoded from the store) and of each text."""
    views = []
    model_device = next(autoencoder.parameters(), torch.empty(0)).device
    for i in range(min(n_contexts, store.n_contexts)):
        context = store.context(i, hooks=[analysis.hook])
        z = autoencoder.encode(context["activations"][analysis.hook].to(model_device)).float().cpu()
        views.append({"title": f"Stored context {i}", "ids": context["tokens"], "z": z})
    if prompts:
        from sae_kit.hooks import resolve_hooks
        from sae_kit.models import load_model
        from sae_kit.prompt_features import prompt_features

        if lm is None:
            print(f"loading {analysis.model} for the prompt view", file=sys.stderr)
            lm = load_model(analysis.model, device=device)
        module = resolve_hooks(lm.model, [analysis.hook])[0]
        for text in prompts:
            result = prompt_features(text, autoencoder, lm, module, top=PROMPT_TOP)
            views.append({"title": text if len(text) <= 60 else text[:57] + "…", "ids": result.token_ids,
                          "z": result.activations})
    return views


def _prompt_json(view: dict, names: dict[int, str], analysis, labels: dict[int, list[str]]) -> dict:
    """Per token: its top features [[id, value, fraction of max]]; and the text's strongest features."""
    z = view["z"]
    maximum = analysis.max_activation.clamp(min=1e-12)
    values, features = z.topk(min(PROMPT_TOP, z.shape[1]), dim=1)
    tokens = []
    for position, token in enumerate(view["ids"].tolist()):
        tops = [[int(f), round(float(v), 4), round(float(v) / float(maximum[f]), 3)]
                for f, v in zip(features[position], values[position]) if v > 0]
        tokens.append({"t": names[token], "f": tops})
    peak = z[1:].max(0).values if z.shape[0] > 1 else z.max(0).values
    n = min(20, int((peak > 0).sum()))
    overall_values, overall = peak.topk(n)
    return {
        "title": view["title"],
        "tokens": tokens,
        "overall": [[int(f), round(float(v), 4), round(float(v) / float(maximum[f]), 3)]
                    for f, v in zip(overall, overall_values)],
        # each listed feature's activation at every token, as a fraction of its max (for shading)
        "series": {str(int(f)): (z[:, f] / maximum[f]).double().round(decimals=3).tolist() for f in overall},
        "labels": {str(f): labels[f] for f in {int(x) for x in features.reshape(-1).tolist()} | set(overall.tolist())
                   if f in labels},
    }
