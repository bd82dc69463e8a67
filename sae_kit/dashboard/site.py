"""Build the static dashboard site of an analysis::

    SITE/index.html               every built feature in one table: search, sort, virtual scrolling
    SITE/feature.html             one page that renders any feature: feature.html#123 (or ?f=123)
    SITE/map.html                 the feature map: decoder directions in 2-D (PCA), coloured by density
    SITE/prompts.html             the prompt view: the features firing on a few texts, token by token
    SITE/data/site.js             what the site holds: sizes, which features are built, figure templates
    SITE/data/vocab.js            the text of every token code used
    SITE/data/index-000.js        the index's columns, 65,536 features per file, in the site's order
    SITE/data/map.js              the map's coordinates, in the index's order
    SITE/data/features-00000.js   the records of features 0 … 63 (file s: ids 64·s … 64·s + 63)
    SITE/assets/                  plotly.min.js (from the installed plotly), site.css, site.js, one script per page
    SITE/site.json                what was built from what, timings and sizes

Everything is local: pages open from file:// with no network at all; the data files are scripts
(`saeKitRegister(kind, key, payload)`) that pages add as <script> tags, since file:// forbids
fetch. A feature's record is about 8 KB with 20 top examples and 10 bands of 20 (see
`encoding` for the compact codes), so the size of a site grows with the number of features but
every page loads only what it shows.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.analysis.examples import example_windows
from sae_kit.analysis.neighbours import Neighbours, decoder_neighbours
from sae_kit.analysis.result import load_analysis, load_explanations, select_features
from sae_kit.artifacts import (
    atomic_write_json,
    atomic_write_text,
    finish_output_dir,
    prepare_output_dir,
    write_plotly_js,
)
from sae_kit.autoencoders import load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.dashboard.encoding import ACT_ZERO, ALPHABET, BASE, TERMINAL, digits_needed
from sae_kit.dashboard.featuremap import map_columns, pca_2d
from sae_kit.dashboard.figures import BAND_COLOURS, density_bins, figure_templates
from sae_kit.dashboard.pages import data_script, embed_json, render, template
from sae_kit.dashboard.prompts import prompt_views, prompts_data
from sae_kit.dashboard.records import (
    LABEL_TOKENS,
    feature_records,
    index_columns,
    store_token_codes,
    top_token_labels,
)
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.tokens import display_tokens

FORMAT = "sae-kit-dashboard"
FORMAT_VERSION = 2
SITE_FILE = "site.json"
PAGES = ("index.html", "feature.html", "map.html", "prompts.html")
ASSETS = ("site.css", "site.js", "index.js", "feature.js", "map.js", "prompts.js")
INDEX_ROWS = 65_536
"""Index rows per data/index-NNN.js file."""
CHUNK = 1024
"""Features whose windows are computed at once (whole data files; memory: about 0.5 MB per feature
with the default windows, so ~0.5 GB at a time)."""


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
    """cpu, cuda … for re-encoding and the decoder cosines (default: CPU)."""
    neighbours: int = 10
    """Nearest features by decoder cosine listed on each feature page (0: none)."""
    shard_features: int = 64
    """Feature ids per data file (file s holds ids shard_features·s …)."""
    feature_map: bool = True
    """Write the feature map (map.html: decoder directions in 2-D)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.before < 0 or self.after < 0 or self.prompt_contexts < 0:
            raise SaeKitError("--before, --after and --prompt-contexts must be non-negative")
        if self.before + self.after + 1 > BASE:
            raise SaeKitError(f"windows hold at most {BASE} tokens: need --before + --after < {BASE}")
        if not 0 <= self.min_density <= self.max_density <= 1:
            raise SaeKitError(f"need 0 ≤ --min-density ≤ --max-density ≤ 1 (got {self.min_density}, {self.max_density})")
        if self.neighbours < 0 or self.shard_features < 1:
            raise SaeKitError("--neighbours must be ≥ 0 and --shard-features ≥ 1")


def build_site(
    analysis_dir: str | Path, out_dir: str | Path, features: list[int] | None = None, top: int | None = None, *,
    autoencoder=None, tokenizer=None, lm=None, overwrite: bool = False, progress: bool = True, **options,
) -> Path:
    """Write the site for `analysis_dir` into `out_dir`; returns `out_dir` (open out_dir/index.html).

    Which features are built: `features` (ids), else the `top` N by `sort_by` among features with
    min_density ≤ density ≤ max_density (see `select_features`), else every feature that fired
    (`--all`, the default, for SAEs of any width). `options` are the fields of `SiteOptions`:
    windows show `before` tokens before and `after` after each example; each page lists its
    `neighbours` nearest features by decoder cosine; the prompt view shows the first
    `prompt_contexts` contexts of the store (no language model needed) and each text in `prompts`
    (the language model is loaded, unless `lm` is given). `autoencoder`, `tokenizer`: already
    loaded objects, else loaded from the analysis' run and model. Explanations and their scores
    are shown when ANALYSIS/explanations.json exists (`sae-kit explain`).
    """
    opts = SiteOptions(**{k: tuple(v) if k == "prompts" else v for k, v in options.items()})
    started = time.perf_counter()
    analysis = load_analysis(analysis_dir)
    out = Path(out_dir)
    prepare_output_dir(out, SITE_FILE, "a dashboard", overwrite, clear=("features", "data"))
    chosen = _choose(analysis, features, top, opts.sort_by, opts.min_density, opts.max_density)
    if autoencoder is None:
        if not analysis.run:
            raise SaeKitError("the analysis records no run directory; pass the autoencoder to build_site")
        autoencoder = load_autoencoder(analysis.run, device=opts.device)
    if tokenizer is None:
        tokenizer = lm.tokenizer if lm is not None else analysis.load_tokenizer()
    store = ActivationStore(analysis.store)
    explanations = load_explanations(analysis_dir)
    built = torch.tensor(chosen, dtype=torch.long)
    timings: dict[str, float] = {}

    with _timed(timings, "labels"):
        codes, candidates, labels = _token_codes_and_labels(analysis, store, built, tokenizer)
    with _timed(timings, "neighbours"):
        W_dec = autoencoder.W_dec.detach()
        neighbours = (decoder_neighbours(W_dec, opts.neighbours, queries=built, candidates=candidates) if opts.neighbours
                      else Neighbours(torch.zeros(len(built), 0, dtype=torch.long), torch.zeros(len(built), 0)))
    with _timed(timings, "features"):
        used, feature_bytes = _write_feature_shards(out / "data", analysis, built, autoencoder, store, codes, labels,
                                                    neighbours, explanations, opts, progress)
    views = prompt_views(analysis, store, autoencoder, opts.prompts, opts.prompt_contexts, lm, opts.device)
    info = {"run": analysis.run, "store": analysis.store, "hook": analysis.hook, "model": analysis.model,
            "analysis": str(Path(analysis_dir).resolve()), "built": len(chosen)}
    with _timed(timings, "index_map_pages"):
        index_bytes = write_site_files(out, analysis, built, labels=labels, codes=codes, used=used, tokenizer=tokenizer,
                                       explanations=explanations, W_dec=W_dec, info=info, widths=_widths(store),
                                       opts=opts, prompts=prompts_data(views, analysis, tokenizer, labels))
    timings = {k: round(v, 2) for k, v in timings.items()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "sae_kit_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info, "features": chosen,
                "before": opts.before, "after": opts.after, "options": opts.to_dict(),
                "bytes": {"features": feature_bytes, "index": index_bytes,
                          "total": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())},
                "timings": timings, "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_json(out / SITE_FILE, manifest, fsync=False)
    finish_output_dir(out)
    return out


@contextmanager
def _timed(timings: dict[str, float], name: str):
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def _token_codes_and_labels(analysis, store: ActivationStore, built: torch.Tensor, tokenizer):
    """The site's token codes (ranked by frequency in the store), the candidate neighbours (every
    feature that fired, and the built ones) and the label tokens of each candidate ([F, 4], −1 pads)."""
    logit_ids = [analysis.promoted_ids, analysis.suppressed_ids] if analysis.promoted_ids is not None else []
    codes = store_token_codes(store, [t.reshape(-1) for t in logit_ids], vocab_size=len(tokenizer))
    candidates = torch.unique(torch.cat([(analysis.fire_count > 0).nonzero().squeeze(1), built]))
    labels = torch.full((analysis.n_features, LABEL_TOKENS), -1, dtype=torch.long)
    labels[candidates] = top_token_labels(analysis, store, candidates)
    return codes, candidates, labels


def _choose(analysis, features, top, sort_by, min_density, max_density) -> list[int]:
    """The built features, in the site's order (ids ascending, or the --top order)."""
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


# ----------------------------------------------------------------------------- data files


def _write_feature_shards(data: Path, analysis, built: torch.Tensor, autoencoder, store: ActivationStore, codes,
                          labels: torch.Tensor, neighbours: Neighbours, explanations: dict[int, dict],
                          opts: SiteOptions, progress: bool) -> tuple[np.ndarray, int]:
    """data/features-NNNNN.js for every shard holding a built feature; windows computed CHUNK
    features at a time (whole shards). Returns which token ranks the examples use, and the bytes written."""
    data.mkdir(parents=True, exist_ok=True)
    position = torch.full((analysis.n_features,), -1, dtype=torch.long)
    position[built] = torch.arange(len(built))
    built_list = built.tolist()
    ids = built.sort().values
    shard_of = ids // opts.shard_features
    widths = _widths(store)
    used = np.zeros(len(codes.token), dtype=bool)
    written = 0
    bar = tqdm(total=len(ids), desc="features", unit="feature", disable=not progress)
    start = 0
    while start < len(ids):  # a chunk: whole shards, at least CHUNK features (or what is left)
        stop = min(len(ids), start + CHUNK)
        stop = int(torch.searchsorted(shard_of, shard_of[stop - 1], right=True))
        chunk = ids[start:stop]
        windows = example_windows(analysis, chunk.tolist(), autoencoder=autoencoder, store=store,
                                  before=opts.before, after=opts.after)
        used[codes.rank[windows.tokens[windows.tokens >= 0].numpy()]] = True
        records = feature_records(analysis, windows, codes, position=position, built=built_list, neighbours=neighbours,
                                  labels=labels, explanations=explanations, **widths)
        for s in shard_of[start:stop].unique().tolist():
            group = [r for r in records if r["id"] // opts.shard_features == s]
            text = data_script("features", s, group)
            atomic_write_text(data / f"features-{s:05d}.js", text)
            written += len(text.encode("utf-8"))
        bar.update(len(chunk))
        start = stop
    bar.close()
    return used, written


def _write_index(data: Path, analysis, built: torch.Tensor, labels: torch.Tensor, codes, explanations) -> int:
    """data/index-NNN.js: INDEX_ROWS rows per file, in the site's order. Returns the bytes written."""
    written = 0
    for i, start in enumerate(range(0, len(built), INDEX_ROWS)):
        rows = built[start : start + INDEX_ROWS]
        columns = index_columns(analysis, rows, labels[rows], codes, explanations)
        if start:  # ids are delta-coded from the previous file's last id
            columns["id_deltas"][0] = int(rows[0] - built[start - 1])
        text = data_script("index", i, columns)
        atomic_write_text(data / f"index-{i:03d}.js", text)
        written += len(text.encode("utf-8"))
    return written


def _write_vocab(data: Path, codes, used: np.ndarray, tokenizer) -> None:
    """data/vocab.js: the text of each used token rank (0 for ranks no file refers to)."""
    ranks = np.nonzero(used)[0]
    names = display_tokens(tokenizer, codes.token[ranks].tolist())
    table: list = [0] * (int(ranks.max()) + 1 if len(ranks) else 0)
    for r in ranks.tolist():
        table[r] = names.get(int(codes.token[r]), "")
    atomic_write_text(data / "vocab.js", data_script("vocab", 0, table))


def _widths(store: ActivationStore) -> dict[str, int]:
    """Base-91 digits of the context and position numbers of examples."""
    return {"context_width": digits_needed(max(store.n_contexts - 1, 0)),
            "position_width": digits_needed(max(store.context_len - 1, 0))}


def write_site_files(out: Path, analysis, built: torch.Tensor, *, labels: torch.Tensor, codes, used: np.ndarray,
                     tokenizer, explanations: dict[int, dict], W_dec: torch.Tensor, info: dict, widths: dict[str, int],
                     opts: SiteOptions, prompts: dict) -> int:
    """Everything but the feature records: the index files, the vocabulary, the map, data/site.js,
    the pages and the assets. built [n] in the site's order; labels [F, 4]; used [ranks]: the
    token ranks the feature records refer to (the labels' and logit tokens' are added here).
    Returns the bytes of the index files."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    index_bytes = _write_index(data, analysis, built, labels, codes, explanations)
    used = used.copy()
    used[codes.rank[labels[labels >= 0].numpy()]] = True  # neighbour lists name features outside the site too
    if analysis.promoted_ids is not None:
        used[codes.rank[torch.cat([analysis.promoted_ids[built], analysis.suppressed_ids[built]]).numpy()]] = True
    _write_vocab(data, codes, used, tokenizer)
    if opts.feature_map:
        coords = pca_2d(W_dec[built.to(W_dec.device)].cpu())
        atomic_write_text(data / "map.js", data_script("map", 0, map_columns(coords)))
    bits = torch.zeros(-(-analysis.n_features // 6) * 6, dtype=torch.long)
    bits[built] = 1
    bitmap = (bits.reshape(-1, 6) << torch.arange(6)).sum(1)  # 6 features per digit, lowest id in bit 0
    site = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "n_features": analysis.n_features, "n_tokens": analysis.n_tokens, "built": len(built),
        "built_bits": "".join(ALPHABET[d] for d in bitmap.tolist()),
        "shard_features": opts.shard_features, "index_files": -(-len(built) // INDEX_ROWS), "index_rows": INDEX_ROWS,
        "alphabet": ALPHABET, "terminal": TERMINAL, "act_zero": ACT_ZERO, **widths,
        "before": opts.before, "after": opts.after, "top_k": analysis.top_k, "n_quantiles": analysis.n_quantiles,
        "hist_bins": int(analysis.hist_counts.shape[1]),
        "logits": analysis.promoted_ids is not None, "explanations": bool(explanations), "map": opts.feature_map,
        "neighbours": opts.neighbours,
        "summary": {**info, "n_features": analysis.n_features, "dead": int((analysis.fire_count == 0).sum()),
                    "dense": int((analysis.density > 0.1).sum()), "n_tokens": analysis.n_tokens},
        "density": density_bins(analysis.density), "figures": figure_templates(), "band_colours": list(BAND_COLOURS),
    }
    atomic_write_text(data / "site.js", data_script("site", 0, site))
    _write_pages(out, embed_json(prompts))
    return index_bytes


def _write_pages(out: Path, prompts_json: str) -> None:
    """The four HTML pages, and the assets: plotly.js from the installed plotly package (never a CDN), CSS, JS."""
    for name in PAGES:
        page = template(name)
        atomic_write_text(out / name, render(page, data=prompts_json) if name == "prompts.html" else page)
    write_plotly_js(out / "assets")
    for name in ASSETS:
        atomic_write_text(out / "assets" / name, template(name))
