"""The digits companion report (scripts/classic_autoencoders.py), run in its --quick form.

The script runs in-process through its `main(argv)`; the checks are on what a reader gets: every
file, PNGs that decode, HTML that needs no network, numbers in the README that are the numbers in
metrics.json, and models that do what their names say (the dense AE beats the mean digit, the
denoising AE's output is closer to the clean digit than its noisy input is). When kaleido or
Chromium is missing the PNG check skips and the rest still holds.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "classic_autoencoders.py"
FIGURES = ("reconstructions", "denoising", "vae_samples", "vae_latent_map", "sae_features", "sae_feature_examples")


def load_script():
    spec = importlib.util.spec_from_file_location("classic_autoencoders", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and inspect look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def report(script, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("classic-autoencoders")
    metrics = script.main(["--out", str(out), "--quick", "--seed", "0"])
    return out, metrics


def decode_png(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG after checking its signature, every chunk's CRC and that the
    compressed pixel data inflates to exactly the size the header announces."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} has no PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path.name}: bad CRC in a {kind!r} chunk"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, bit_depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    if interlace == 0:  # one filter byte per row, then the row's samples
        assert len(pixels) == height * (1 + (width * channels * bit_depth + 7) // 8)
    return width, height


def test_every_file_is_written(report):
    out, metrics = report
    for name in ("README.md", "metrics.json", "plotly.min.js", *(f"{f}.html" for f in FIGURES)):
        assert (out / name).is_file(), f"{name} missing"
    assert json.loads((out / "metrics.json").read_text())["held_out"] == metrics["held_out"]
    assert sorted(p.name for p in out.glob("*.js")) == ["plotly.min.js"]  # plotly.js once, shared


def test_html_figures_work_offline(report):
    out, _ = report
    for figure in FIGURES:
        html = (out / f"{figure}.html").read_text()
        assert 'src="plotly.min.js"' in html
        assert "cdn.plot.ly" not in html and "https://" not in html.split("<body>")[0]
        assert len(html) < 200_000  # the data, not another copy of plotly.js


def test_pngs_are_valid_images(report):
    out, metrics = report
    if metrics["png_skipped"]:
        pytest.skip(f"PNG export unavailable here: {metrics['png_skipped']}")
    for figure in FIGURES:
        width, height = decode_png(out / f"{figure}.png")
        assert 200 <= width <= 2000 and 150 <= height <= 2000, (figure, width, height)


def test_models_do_what_their_names_say(report):
    held, noise = report[1]["held_out"], report[1]["denoising"]
    mean_digit = held["mean image"]["mse"]
    for name in ("ae", "dae", "sae", "pca-16"):
        assert held[name]["mse"] < 0.6 * mean_digit, f"{name} is hardly better than the mean digit"
    assert held["pca-16"]["mse"] < held["pca-2"]["mse"]
    # the noise is what the report says it is: E(σε)² = σ² per pixel
    assert noise["noisy_input"] == pytest.approx(noise["noise_std"] ** 2, rel=0.05)
    assert noise["dae"] < 0.6 * noise["noisy_input"], "the denoising AE does not remove the noise"
    sae = held["sae"]
    assert 1 <= sae["l0"] < sae["latents"] / 2 and sae["dead_fraction"] < 0.5
    assert report[1]["pca_matched_to_sae_l0"] == round(sae["l0"])
    assert report[1]["latent_knn"]["vae"]["accuracy"] > 0.2  # the 2-D map carries the digit (chance 0.1)
    for row in held.values():
        assert 0 <= row["mse"] and row["fvu"] == pytest.approx(row["mse"] / (mean_digit / held["mean image"]["fvu"]),
                                                                rel=1e-4)


def test_readme_reports_the_run(report):
    out, metrics = report
    readme = (out / "README.md").read_text()
    for name, row in metrics["held_out"].items():
        assert f"| {row['latents']} | {row['mse']:.4f} | {row['fvu']:.3f} |" in readme, name
    assert "--quick" in metrics["command"] and metrics["command"] in readme
    assert metrics["versions"]["torch"] in readme and "Quick run" in readme
    for target in re.findall(r"\]\(([^)]+)\)", readme):
        assert (out / target).is_file(), f"README links to a missing {target}"
    if not metrics["png_skipped"]:
        assert all(f"]({figure}.png)" in readme for figure in FIGURES)


def test_without_png_export_the_report_still_stands(script, tmp_path, monkeypatch):
    import plotly.io

    def no_browser(*args, **kwargs):
        raise RuntimeError("no Chromium here")

    monkeypatch.setattr(plotly.io, "write_images", no_browser)
    metrics = script.main(["--out", str(tmp_path), "--quick", "--steps", "20"])
    assert "no Chromium here" in metrics["png_skipped"]
    assert not list(tmp_path.glob("*.png"))
    assert all((tmp_path / f"{figure}.html").is_file() for figure in FIGURES)
    readme = (tmp_path / "README.md").read_text()
    assert "PNG export was skipped" in readme and ".png)" not in readme
