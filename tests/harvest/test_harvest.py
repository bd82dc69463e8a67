"""Harvest end to end on tiny models: CLI, refusal rules, SIGKILL + resume, the default model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_kit.cli import main
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.lm.corpus import CorpusSpec
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model


def test_stored_activations_equal_a_fresh_forward(tiny_store, tiny_llama_dir):
    store = ActivationStore(tiny_store)
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    names = resolve_hooks(loaded.model, ["resid.1", "mlp.1"])
    ctx = store.context(5)
    fresh = run_to_hooks(loaded.model, ctx["tokens"][None], names)
    for name in names:
        torch.testing.assert_close(ctx["activations"][name], fresh[name][0])


def test_refuses_non_empty_out_and_overwrites_on_request(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["harvest", "--model", str(tiny_llama_dir), "--hook", "resid.0", "--tokens", "256", "--context-len", "32",
            "--out", str(out)]
    assert main(args) == 1
    assert "exists and is not empty; pass --resume" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 1  # foreign files are never deleted
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert main(args) == 0
    assert main([*args, "--overwrite", "--tokens", "512"]) == 0
    assert ActivationStore(out).n_tokens == 512


def test_unknown_hook_and_disk_space(tmp_path, tiny_llama_dir, capsys):
    args = ["harvest", "--model", str(tiny_llama_dir), "--context-len", "32"]
    assert main([*args, "--hook", "resid.9", "--out", str(tmp_path / "a")]) == 1
    assert "unknown hook 'resid.9'; closest valid names:" in capsys.readouterr().err
    assert main([*args, "--hook", "resid.0", "--tokens", str(10**15), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "free" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_small_corpus_harvests_what_there_is(tmp_path, tiny_llama_dir, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("a tiny corpus with few words\n" * 40)
    cfg = HarvestConfig(out=str(tmp_path / "s"), model=str(tiny_llama_dir), hooks=("resid.0",),
                        tokens=100_000, context_len=32, corpus=CorpusSpec(str(corpus)))
    harvest(cfg, progress=False)
    assert "the corpus holds only" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["corpus_exhausted"] and 0 < manifest["n_tokens"] < 100_000


def _harvest_cmd(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sae_kit.cli", "harvest", "--model", str(model_dir), "--hook", "resid.1",
            "--hook", "attn.0", "--tokens", "60000", "--context-len", "32", "--shard-tokens", "1024",
            "--batch-size", "8", "--out", str(out), *extra]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_llama_dir):
    """Kill a real harvest process part-way with SIGKILL; --resume gives the same store."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    reference = tmp_path / "reference"
    subprocess.run(_harvest_cmd(tiny_llama_dir, reference), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_harvest_cmd(tiny_llama_dir, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(json.loads((killed / "manifest.json").read_text())["shards"]) >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads((killed / "manifest.json").read_text())
    assert not partial["complete"] and 5 <= len(partial["shards"]) < 58
    assert ActivationStore(killed).verify() == []  # what was written survived the kill intact

    subprocess.run(_harvest_cmd(tiny_llama_dir, killed, "--resume"), check=True, env=env, capture_output=True)
    got = json.loads((killed / "manifest.json").read_text())
    want = json.loads((reference / "manifest.json").read_text())
    assert got["complete"] and got["n_tokens"] == want["n_tokens"] == 60000
    assert [(s["file"], s["sha256"]) for s in got["shards"]] == [(s["file"], s["sha256"]) for s in want["shards"]]
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_resume_with_other_settings_is_refused(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "s"
    base = ["harvest", "--model", str(tiny_llama_dir), "--tokens", "256", "--context-len", "32", "--out", str(out)]
    assert main([*base, "--hook", "resid.0"]) == 0
    assert main([*base, "--hook", "resid.0", "--resume"]) == 0  # complete, same settings: nothing to do
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main([*base, "--hook", "resid.1", "--resume"]) == 1  # complete, other settings: refused, not ignored
    assert "different settings (hooks: store ['resid.0'] vs now ['resid.1'])" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main([*base, "--hook", "resid.1", "--resume"]) == 1
    assert "different settings (hooks:" in capsys.readouterr().err
    assert main([*base, "--hook", "resid.0", "--context-len", "16", "--resume"]) == 1
    assert "context_len: store 32 vs now 16" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[k] == before[k] for k in before if k != "manifest.json")


def test_verify_cli_names_bad_shard(tiny_store, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_store, copy)
    assert main(["verify", str(copy)]) == 0
    bad = sorted(copy.glob("shard-*"))[2]
    bad.write_bytes(bad.read_bytes()[:-7])
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr()
    assert f"BAD {bad.name}" in out.out and "1 of 4 shards failed" in out.err


@pytest.mark.slow
def test_default_model_and_corpus(tmp_path):
    """The embedded defaults end to end: SmolLM2-135M (GGUF) on stdlib docstrings, bfloat16 storage."""
    out = tmp_path / "store"
    assert main(["harvest", "--hook", "resid.2", "--tokens", "1024", "--context-len", "64", "--dtype", "bfloat16",
                 "--out", str(out)]) == 0
    store = ActivationStore(out)
    assert store.n_tokens == 1024 and store.d_in("model.layers.2") == 576
    assert store.manifest["model"]["name"] == "SmolLM2-135M-Instruct"
    assert store.manifest["hooks"][0]["dtype"] == "bfloat16"
    norms = store.context(1)["activations"]["model.layers.2"].norm(dim=-1)
    assert torch.isfinite(norms).all() and norms[0] > 3 * norms[1:].median()  # BOS has the large norm
