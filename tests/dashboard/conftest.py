"""The dashboard tests' fixtures (a site of the tiny analysis, an analysis with explanations) and
readers of a site's data files (the Python side of what assets/site.js decodes)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sae_kit.dashboard import build_site
from sae_kit.dashboard.encoding import decode_token_codes

DATA_FILE = re.compile(r'^saeKitRegister\("(\w+)",(\d+),(.*)\);\n$', re.DOTALL)


def read_data(path: Path):
    """(kind, key, payload) of a SITE/data/*.js file."""
    match = DATA_FILE.match(path.read_text(encoding="utf-8"))
    assert match, path
    return match.group(1), int(match.group(2)), json.loads(match.group(3))


def records(site: Path) -> dict[int, dict]:
    out = {}
    for file in sorted((site / "data").glob("features-*.js")):
        kind, _, payload = read_data(file)
        assert kind == "features"
        out.update((record["id"], record) for record in payload)
    return out


def site_info(site: Path) -> dict:
    return read_data(site / "data" / "site.js")[2]


def index_rows(site: Path) -> dict:
    """The index columns, joined over its files (ids decoded from their deltas)."""
    info, cols, last = site_info(site), {}, 0
    for i in range(info["index_files"]):
        _, _, part = read_data(site / "data" / f"index-{i:03d}.js")
        for key, value in part.items():
            if key == "id_deltas":
                ids = []
                for d in value:
                    last += d
                    ids.append(last)
                cols.setdefault("ids", []).extend(ids)
            elif isinstance(value, str):
                cols.setdefault(key, []).extend(value.split(" ") if value else [])
            else:
                cols.setdefault(key, []).extend(value)
    return cols


def rank_texts(site: Path, ranks: list[int]) -> list[str]:
    vocab = read_data(site / "data" / "vocab.js")[2]
    return [vocab[r] for r in ranks]


def vocab_texts(site: Path, codes: str) -> list[str]:
    return rank_texts(site, decode_token_codes(codes))


@pytest.fixture(scope="session")
def tiny_site(tiny_analysis, tmp_path_factory):
    return build_site(tiny_analysis.path, tmp_path_factory.mktemp("site") / "site", before=5, after=3,
                      prompts=["def add(a, b):\n    return a < b"], prompt_contexts=2, shard_features=16, progress=False)


@pytest.fixture(scope="session")
def explained_analysis(tiny_analysis, tmp_path_factory):
    """A copy of the tiny analysis with an explanations.json in the agreed format (INTERFACES.md)."""
    path = tmp_path_factory.mktemp("explained") / "A"
    shutil.copytree(tiny_analysis.path, path)
    features = {str(f): {"explanation": f"feature {f} likes {'zebras' if f == 3 else 'tokens'}",
                         "detection": {"balanced_accuracy": 0.5 + f / 100, "n": 20},
                         "fuzzing": {"balanced_accuracy": 0.6, "n": 20}} for f in range(8)}
    (path / "explanations.json").write_text(json.dumps({
        "format": "sae-kit-explanations", "format_version": 1, "explainer": {"kind": "transformers", "model": "m", "url": None},
        "scorer": {"kind": "transformers", "model": "m"}, "created": "now", "config": {}, "features": features}))
    return path
