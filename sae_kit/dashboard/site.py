"""Build the static dashboard site of an analysis::

    SITE/index.html            sortable, searchable table of the features built, density overview
    SITE/features/<id>.html    one page per feature: histogram, logit effects, top examples, bands
    SITE/prompts.html          the prompt view: the features firing on a few texts, token by token
    SITE/assets/               plotly.min.js (written once, from the installed plotly), site.css, site.js
    SITE/site.json             what was built from what

Everything is local: pages open from file:// with no network at all.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.analysis.examples import example_windows
from sae_kit.analysis.prompt_view import prompt_features
from sae_kit.analysis.result import load_analysis, select_features
from sae_kit.artifacts import atomic_write_json, atomic_write_text, prepare_output_dir, write_plotly_js
from sae_kit.autoencoders import load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.dashboard.pages import embed_json, feature_page_data, index_data, index_row, render
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.hooks import resolve_hooks
from sae_kit.lm.models import load_model
from sae_kit.lm.tokens import display_tokens

FORMAT = "sae-kit-dashboard"
SITE_FILE = "site.json"
ASSETS = ("site.css", "site.js")
PROMPT_TOP = 5
CHUNK = 500
"""Features whose windows are computed at once (memory: about 40 kB per feature)."""


def _template(name: str) -> str:
    return resources.files("sae_kit.dashboard").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class SiteOptions(JsonConfig):
    """How a dashboard site is built (`build_site`'s options and `sae-kit dashboard`'s flags)."""

    sort_by: Literal["max_activation", "density", "mean_nonzero", "index"] = "max_activation"
    """Order for --top, largest first."""
    min_density: float = 0.0
    """With --top: leave out features rarer than this."""
    max_density: float = 1.0
    """With --top: leave out features denser than this."""
    before: int = 10
    """Tokens shown before each example token."""
    after: int = 4
    """Tokens shown after it."""
    prompts: tuple[str, ...] = ()
    """Texts for the prompt view (repeat the flag; loads the language model)."""
    prompt_contexts: int = 3
    """Stored contexts shown in the prompt view."""
    device: str | None = None
    """cpu, cuda … for re-encoding (default: CPU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.before < 0 or self.after < 0 or self.prompt_contexts < 0:
            raise SaeKitError("--before, --after and --prompt-contexts must be non-negative")
        if not 0 <= self.min_density <= self.max_density <= 1:
            raise SaeKitError(f"need 0 ≤ --min-density ≤ --max-density ≤ 1 (got {self.min_density}, {self.max_density})")


def build_site(
    analysis_dir: str | Path, out_dir: str | Path, features: list[int] | None = None, top: int | None = None, *,
    autoencoder=None, tokenizer=None, lm=None, overwrite: bool = False, progress: bool = True, **options,
) -> Path:
    """Write the site for `analysis_dir` into `out_dir`; returns `out_dir` (open out_dir/index.html).

    Which features get pages: `features` (ids), else the `top` N by `sort_by` among features with
    min_density ≤ density ≤ max_density (see `select_features`), else every feature that fired.
    `options` are the fields of `SiteOptions` (sort_by, min_density, max_density, before, after,
    prompts, prompt_contexts, device): windows show `before` tokens before and `after` after each
    example; the prompt view shows the first `prompt_contexts` contexts of the store (no
    language model needed) and each text in `prompts` (the language model is loaded, unless `lm`
    is given). `autoencoder`, `tokenizer`: already loaded objects, else loaded from the
    analysis' run and model.
    """
    opts = SiteOptions(**{k: tuple(v) if k == "prompts" else v for k, v in options.items()})
    started = time.perf_counter()
    analysis = load_analysis(analysis_dir)
    out = Path(out_dir)
    prepare_output_dir(out, SITE_FILE, "a dashboard", overwrite, clear=("features",))
    chosen = _choose(analysis, features, top, opts.sort_by, opts.min_density, opts.max_density)
    if autoencoder is None:
        if not analysis.run:
            raise SaeKitError("the analysis records no run directory; pass the autoencoder to build_site")
        autoencoder = load_autoencoder(analysis.run, device=opts.device)
    if tokenizer is None:
        tokenizer = lm.tokenizer if lm is not None else analysis.load_tokenizer()
    store = ActivationStore(analysis.store)

    prompt_views = _prompt_views(analysis, store, autoencoder, opts.prompts, opts.prompt_contexts, lm, opts.device)
    (out / "features").mkdir(parents=True, exist_ok=True)
    _write_assets(out / "assets")
    rows, labels, names = _write_feature_pages(out, analysis, chosen, autoencoder, store, tokenizer, opts, progress)
    info = {"run": analysis.run, "store": analysis.store, "hook": analysis.hook, "model": analysis.model,
            "analysis": str(Path(analysis_dir).resolve()), "built": len(chosen)}
    atomic_write_text(out / "index.html", render(_template("index.html"), title="Features", root="",
                                           data=embed_json(index_data(analysis, rows, info))))
    _add_names(names, tokenizer, [view["ids"] for view in prompt_views])
    prompt_data = {"prompts": [_prompt_json(view, names, analysis, labels) for view in prompt_views],
                   "built": sorted(labels)}
    atomic_write_text(out / "prompts.html", render(_template("prompts.html"), title="Prompts", root="",
                                             data=embed_json(prompt_data)))
    manifest = {"format": FORMAT, "sae_kit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **info, "features": chosen, "before": opts.before, "after": opts.after,
                "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(out / SITE_FILE, manifest, fsync=False)
    return out


def _write_feature_pages(out: Path, analysis, chosen: list[int], autoencoder, store: ActivationStore, tokenizer,
                         opts: SiteOptions, progress: bool) -> tuple[list[dict], dict[int, list[str]], dict[int, str]]:
    """SITE/features/<id>.html for every chosen feature; returns the index rows, each feature's
    label and the display text of every token seen (reused by the other pages)."""
    page = _template("feature.html")
    names: dict[int, str] = {}
    rows, labels = [], {}
    bar = tqdm(total=len(chosen), desc="pages", unit="page", disable=not progress)
    for start in range(0, len(chosen), CHUNK):  # windows for a chunk of features at a time: bounded memory
        chunk = chosen[start : start + CHUNK]
        windows = example_windows(analysis, chunk, autoencoder=autoencoder, store=store, before=opts.before, after=opts.after)
        ids = [windows.tokens[windows.tokens >= 0]]
        if analysis.promoted_ids is not None:
            ids += [analysis.promoted_ids[chunk].reshape(-1), analysis.suppressed_ids[chunk].reshape(-1)]
        _add_names(names, tokenizer, ids)
        for row, f in enumerate(chunk):
            at = start + row
            neighbours = (chosen[at - 1] if at > 0 else None, chosen[at + 1] if at + 1 < len(chosen) else None)
            data = feature_page_data(analysis, windows, row, names, neighbours)
            atomic_write_text(out / "features" / f"{f}.html", render(page, title=f"Feature {f}", root="../", data=embed_json(data)))
            rows.append(index_row(analysis, windows, row, names))
            labels[f] = rows[-1]["label"]
            bar.update(1)
    bar.close()
    return rows, labels, names


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


def _write_assets(assets: Path) -> None:
    """plotly.js from the installed plotly package (never a CDN), and the site's CSS and JS."""
    write_plotly_js(assets)
    for name in ASSETS:
        atomic_write_text(assets / name, _template(name))


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
