"""torchrun on CPU with gloo and 2 real processes: harvest, data-parallel training, sharded latents,
exact resume after SIGKILL, and a failure on one rank stopping both with the same one-line error.

Every launch has a timeout, so nothing here can hang the suite."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_kit.autoencoders import load_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent / "workers"
LAUNCH_TIMEOUT = 300


def torchrun(*args: str, script: Path | None = None, **popen) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node 2 -m sae_kit.cli ARGS` (or SCRIPT ARGS), as a process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    target = [str(script)] if script else ["-m", "sae_kit.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *target, *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, expect: int | None = 0) -> str:
    """Wait (bounded) for a launch; returns its stderr; checks the exit status unless `expect` is None."""
    try:
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_workers(proc)
        raise
    if expect is not None:
        assert (proc.returncode == 0) == (expect == 0), err[-3000:]
    return err


def workers(proc: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == proc.pid:
                env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
                found[int(env["RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def kill_workers(proc: subprocess.Popen, ranks=(0, 1)) -> None:
    """SIGKILL the given ranks (then torchrun ends the rest)."""
    for rank, pid in workers(proc).items():
        if rank in ranks:
            os.kill(pid, signal.SIGKILL)
    if ranks == (0, 1):
        proc.kill()
    proc.communicate(timeout=LAUNCH_TIMEOUT)


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if condition():
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen (exit {proc.poll()}): {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def weights(run) -> dict[str, torch.Tensor]:
    return load_autoencoder(run).state_dict()


# ----------------------------------------------------------------------------- training


def small(store, out, **overrides) -> TrainConfig:
    settings = dict(store=str(store), out=str(out), hook="resid.1", expansion=2, batch_size=256, tokens=256 * 12,
                    lr=3e-3, log_every=4, norm_estimation_tokens=1024, checkpoint_every_tokens=None)
    return TrainConfig(**{**settings, **overrides})


def test_data_parallel_two_ranks_reach_the_weights_of_one_process(tiny_store, tmp_path):
    """Each rank trains on half of every global batch; averaged gradients give one process's step."""
    args = ["train", "--store", str(tiny_store), "--hook", "resid.1", "--arch", "sae,topk", "--k", "4",
            "--expansion", "2", "--batch-size", "256", "--tokens", "3072", "--lr", "3e-3", "--log-every", "4",
            "--norm-estimation-tokens", "1024", "--out", str(tmp_path / "two"), "--no-progress"]
    proc = torchrun(*args)
    train(small(tiny_store, tmp_path / "one", archs=("sae", "topk"), ks=(4,)), progress=False)
    finish(proc)
    for name in ("sae-l1_5", "topk-k_4"):
        one, two = weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
        lines = (tmp_path / "two" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [4, 8, 12]  # rank 0 alone writes them


def test_sharded_latents_match_one_unsharded_process(tiny_store, tmp_path):
    """2 ranks holding half the latents each: the same loss, gradients (TopK with AuxK too) and weights."""
    finish(torchrun(str(tiny_store), str(tmp_path), script=WORKERS / "shard_worker.py"))
    result = json.loads((tmp_path / "result.json").read_text())
    for arch in ("sae", "topk"):
        step = result[arch]
        assert step["terms"] and ("loss_auxk" in step or arch == "sae"), step
        assert max(v for k, v in step.items() if k != "terms") < 1e-5, (arch, step)
    for name in ("sae-l1_5", "topk-k_4"):
        assert max(v for k, v in result[name].items() if k != "auxk_logged") < 1e-4, (name, result[name])
    assert result["topk-k_4"]["auxk_logged"]  # the global top-k_aux over dead latents ran


def test_non_finite_loss_on_one_rank_stops_both_with_the_same_line(tiny_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][1]
    tensors = load_file(str(copy / entry["file"]))
    tensors["model.layers.1"][100, 3] = float("inf")  # one bad activation: one rank's slice of one batch
    save_file(tensors, str(copy / entry["file"]))
    data = (copy / entry["file"]).read_bytes()
    import hashlib

    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    start = time.time()
    err = finish(torchrun("train", "--store", str(copy), "--hook", "resid.1", "--expansion", "2", "--batch-size", "256",
                          "--tokens", "7680", "--log-every", "2", "--norm-estimation-tokens", "256", "--seed", "1",
                          "--out", str(tmp_path / "run"), "--no-progress"), expect=1)
    lines = [line for line in err.splitlines() if line.startswith("sae-kit train: error:")]
    assert len(lines) == 2 and lines[0] == lines[1], err[-3000:]
    assert "the loss of sae-l1_5 is not finite on rank" in lines[0]
    assert time.time() - start < LAUNCH_TIMEOUT / 2


def test_an_exception_on_one_rank_stops_both_with_the_same_line():
    start = time.time()
    err = finish(torchrun(script=WORKERS / "fail_worker.py"), expect=1)
    lines = [line for line in err.splitlines() if line.startswith("sae-kit test: error:")]
    assert lines == ["sae-kit test: error: rank 1: RuntimeError: a failure injected on rank 1"] * 2, err[-3000:]
    assert time.time() - start < 120  # rank 0 was blocked in an all-reduce: it did not wait for a timeout


# ----------------------------------------------------------------------------- harvest


def harvest_args(model_dir, out, *extra) -> list[str]:
    return ["harvest", "--model", str(model_dir), "--hook", "resid.1", "--hook", "mlp.1", "--tokens", "16384",
            "--context-len", "32", "--shard-tokens", "1024", "--batch-size", "8", "--out", str(out), *extra]


def test_harvest_on_two_ranks_equals_one_process_and_resumes_after_a_kill(tiny_llama_dir, tmp_path):
    two = torchrun(*harvest_args(tiny_llama_dir, tmp_path / "two"))
    killed = torchrun(*harvest_args(tiny_llama_dir, tmp_path / "killed"))
    rank0, rank1 = (tmp_path / "killed" / f"manifest.rank-{r}.json" for r in (0, 1))
    wait_until(lambda: len(json.loads(rank1.read_text())["shards"]) >= 2, killed, "rank 1 writing shards")
    # Rank 1 pauses part-way and dies only once rank 0 has finished its own part (the case where the
    # resumed rank 0 has nothing to write but must still join the merge), then torchrun stops rank 0.
    os.kill(workers(killed)[1], signal.SIGSTOP)
    wait_until(lambda: json.loads(rank0.read_text())["complete"], killed, "rank 0 finishing its part")
    assert not json.loads(rank1.read_text())["complete"]
    kill_workers(killed, ranks=(1,))
    assert killed.returncode != 0 and not (tmp_path / "killed" / "manifest.json").exists()
    finish(torchrun(*harvest_args(tiny_llama_dir, tmp_path / "killed", "--resume")))
    finish(two)
    one = harvest(HarvestConfig(out=str(tmp_path / "one"), model=str(tiny_llama_dir), hooks=("resid.1", "mlp.1"),
                                tokens=16384, context_len=32, shard_tokens=1024, batch_size=8), progress=False)
    stores = {name: ActivationStore(tmp_path / name) for name in ("one", "two", "killed")}
    layout = {name: [(s["file"], s["first_context"], s["n_tokens"]) for s in st.shards] for name, st in stores.items()}
    assert layout["two"] == layout["one"] == layout["killed"] and len(layout["one"]) == 16
    assert [s["sha256"] for s in stores["killed"].shards] == [s["sha256"] for s in stores["two"].shards]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in one.iterdir())
    assert stores["two"].complete and stores["two"].n_tokens == 16384
    for hook in stores["one"].hook_names:
        a = stores["one"].iter_chunks(hook)
        for chunk_one, chunk_two in zip(a, stores["two"].iter_chunks(hook), strict=True):
            for key in ("tokens", "context", "position"):
                assert torch.equal(getattr(chunk_one, key), getattr(chunk_two, key))
            torch.testing.assert_close(chunk_two.acts, chunk_one.acts, rtol=1e-5, atol=1e-5)
        batches = zip(stores["one"].batches(hook, 500, seed=3), stores["two"].batches(hook, 500, seed=3), strict=True)
        for x_one, x_two in batches:  # the reader plans the same batches from both stores
            torch.testing.assert_close(x_two, x_one, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- on the fly: the toy "done means"


def fly_args(model_dir, out, *extra) -> list[str]:
    return ["train", "--model", str(model_dir), "--hook", "resid.0", "--hook", "resid.1", "--hook", "resid.2",
            "--hook", "mlp.1", "--arch", "topk", "--k", "4", "--expansion", "2", "--tokens", "2048",
            "--batch-size", "256", "--lr", "3e-3", "--log-every", "4", "--norm-estimation-tokens", "512",
            "--context-len", "32", "--lm-batch-size", "4", "--buffer-batches", "4", "--eval-contexts", "8",
            "--checkpoint-every-tokens", "512", "--out", str(out), "--no-progress", *extra]


def test_on_the_fly_four_hooks_two_ranks_resume_after_a_crash_and_evaluate(tiny_llama_dir, tmp_path):
    """One torchrun command trains an SAE on each of four hooks straight from the corpus; a crash
    (SIGKILL of both ranks) and --resume reach the same weights bit for bit; evaluate works."""
    full = torchrun(*fly_args(tiny_llama_dir, tmp_path / "full"))
    killed = torchrun(*fly_args(tiny_llama_dir, tmp_path / "killed"))
    wait_until(lambda: (tmp_path / "killed" / "checkpoint" / "state.json").is_file(), killed, "a checkpoint")
    kill_workers(killed)
    finish(torchrun(*fly_args(tiny_llama_dir, tmp_path / "killed", "--resume")))
    finish(full)
    hooks = ("resid.0", "resid.1", "resid.2", "mlp.1")
    for hook in hooks:
        a, b = weights(tmp_path / "full" / hook), weights(tmp_path / "killed" / hook)
        for key in a:
            assert torch.equal(a[key], b[key]), (hook, key)
    assert cli_main(["evaluate", "--run", str(tmp_path / "killed"), "--ce-contexts", "4"]) == 0
    table = (tmp_path / "killed" / "eval.md").read_text()
    assert all(f"| {hook} | topk |" in table for hook in hooks)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_data_parallel_on_two_gpus(tiny_store, tmp_path):
    proc = torchrun("train", "--store", str(tiny_store), "--hook", "resid.1", "--expansion", "2", "--batch-size", "256",
                    "--tokens", "3072", "--lr", "3e-3", "--norm-estimation-tokens", "1024", "--device", "cuda",
                    "--out", str(tmp_path / "two"), "--no-progress")
    train(small(tiny_store, tmp_path / "one", device="cuda"), progress=False)
    finish(proc)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)
