"""The helpers every stage directory shares: atomic writes (nothing half-written survives a failure,
the old file stays), plotly.js written once and offline, tagged JSON checks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sae_kit.artifacts import (PLOTLY_FILE, atomic_save_tensors, atomic_write_json, atomic_write_text,
                               prepare_output_dir, read_tagged_json, write_plotly_js)
from sae_kit.errors import SaeKitError


def test_atomic_writes_replace_whole_files(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": [1, 2], "ü": "ß"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1, 2], "ü": "ß"}
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    atomic_save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0).reshape(2, 3).T}, metadata={"k": "v"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["w"], torch.arange(6.0).reshape(2, 3).T)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.safetensors"]  # no temporaries left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "eval.json", "old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_plotly_js_is_written_once_from_the_installed_package(tmp_path):
    from plotly.offline import get_plotlyjs

    path = write_plotly_js(tmp_path / "assets")
    assert path.name == PLOTLY_FILE and path.read_text() == get_plotlyjs()
    before = path.stat().st_mtime_ns
    assert write_plotly_js(tmp_path / "assets") == path and path.stat().st_mtime_ns == before


def test_tagged_json_and_output_dir_errors(tmp_path):
    with pytest.raises(SaeKitError, match="is not an analysis directory .no analysis.json.; create one with X"):
        read_tagged_json(tmp_path, "analysis.json", "fmt", "an analysis directory", "X")
    (tmp_path / "analysis.json").write_text("[1, 2]")
    with pytest.raises(SaeKitError, match="is not the JSON of"):
        read_tagged_json(tmp_path, "analysis.json", "fmt", "an analysis directory", "X")
    (tmp_path / "analysis.json").write_text("{nope")
    with pytest.raises(SaeKitError, match="not valid JSON"):
        read_tagged_json(tmp_path, "analysis.json", "fmt", "an analysis directory", "X")
    with pytest.raises(SaeKitError, match="already holds a site; pass --overwrite"):
        prepare_output_dir(tmp_path, "analysis.json", "a site", overwrite=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaeKitError, match="is a file"):
        prepare_output_dir(tmp_path / "f", "analysis.json", "a site", overwrite=False)
