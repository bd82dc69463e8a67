"""Training on the fly (no store) on a tiny real model: the mixing buffer, rank slices of the corpus,
bit-exact resume after SIGKILL, several hooks in one pass, the held-out store `evaluate` reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_kit.autoencoders import RunInfo, load_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.harvest import ActivationStore
from sae_kit.lm.corpus import CorpusSpec, iter_documents, pack_contexts
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model
from sae_kit.training import TrainConfig, train
from sae_kit.training.stream import ActivationStream, lm_batches

ROOT = Path(__file__).resolve().parents[2]
CORPUS = CorpusSpec()


def fly_args(model_dir, out, *extra) -> list[str]:
    """A small on-the-fly run: two hooks, 24 steps of 128 tokens, a checkpoint every 6 steps."""
    return ["train", "--model", str(model_dir), "--hook", "resid.1", "--hook", "mlp.1", "--tokens", "3072",
            "--batch-size", "128", "--expansion", "2", "--arch", "sae,topk", "--k", "4", "--lr", "3e-3",
            "--log-every", "6", "--norm-estimation-tokens", "512", "--context-len", "32", "--lm-batch-size", "4",
            "--buffer-batches", "4", "--eval-contexts", "8", "--checkpoint-every-tokens", "768",
            "--dead-window-tokens", "512", "--out", str(out), "--no-progress", *extra]


def test_lm_batches_hold_out_eval_contexts_and_split_ranks(tiny_tokenizer):
    contexts = list(pack_contexts(iter_documents(CORPUS), tiny_tokenizer, 32))[:200]
    training = [c for i, c in enumerate(contexts) if i % 20 != 0]
    one = [b for _, (g, b) in zip(range(12), lm_batches(CORPUS, tiny_tokenizer, 32, 4))]
    assert [c for b in one for c in b] == training[:48]  # in corpus order, held-out contexts left out
    halves = [dict(b for _, b in zip(range(6), lm_batches(CORPUS, tiny_tokenizer, 32, 4, rank=r, world=2)))
              for r in (0, 1)]
    assert sorted(halves[0]) == [0, 2, 4, 6, 8, 10] and sorted(halves[1]) == [1, 3, 5, 7, 9, 11]
    assert {**halves[0], **halves[1]} == dict(enumerate(one))  # disjoint slices that make up the whole
    starts = [next(lm_batches(CORPUS, tiny_tokenizer, 32, 4, rank=r, world=2, start=3))[0] for r in (0, 1)]
    assert starts == [4, 3]  # `start` (a resume) skips the earlier batches


def test_mixing_buffer_serves_real_rows_and_resumes_bit_for_bit(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    names = resolve_hooks(loaded.model, ["resid.1", "mlp.1"])

    def stream():
        return ActivationStream(loaded, names, CORPUS, context_len=32, lm_batch=4, batch_size=64, buffer_batches=4,
                                seed=0, device=torch.device("cpu"))

    first = stream()
    it = first.batches()
    batches, states = [], []
    for _ in range(9):
        batches.append(next(it))
        states.append(first.state())
    assert first.storage[names[0]].shape == (4 * 64 + 4 * 31, 32)  # bounded: C rows + one LM batch
    # every served row is a real activation of a training context (BOS dropped), the hooks' rows aligned
    contexts = [c for _, (g, b) in zip(range(8), lm_batches(CORPUS, loaded.tokenizer, 32, 4)) for c in b]
    acts = run_to_hooks(loaded.model, torch.tensor(contexts), names)
    pool = {n: acts[n][:, 1:].reshape(-1, 32) for n in names}
    distance = torch.cdist(batches[0][names[0]], pool[names[0]])
    row = distance.argmin(1)
    assert torch.allclose(distance.min(1).values, torch.zeros(64), atol=1e-4)
    torch.testing.assert_close(batches[0][names[1]], pool[names[1]][row])
    assert len(set(row.tolist())) > 56 and not torch.equal(row.sort().values, row)  # many contexts, shuffled
    # resume from the state after batch 3 (mid-round) and after batch 4 (a round boundary)
    for k in (3, 4):
        resumed = stream().batches({key: value.clone() for key, value in states[k - 1].items()})
        for want in batches[k:]:
            got = next(resumed)
            assert all(torch.equal(got[n], want[n]) for n in names)


def test_several_hooks_train_in_one_pass_and_evaluate_on_the_held_out_store(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "fly"
    assert cli_main(fly_args(tiny_llama_dir, out)) == 0
    err = capsys.readouterr().err
    assert "shuffle buffer 4 batches × 128 rows = 512 rows per hook" in err and "MiB" in err
    names = ["resid.1-sae-l1_5", "resid.1-topk-k_4", "mlp.1-sae-l1_5", "mlp.1-topk-k_4"]
    assert [r["name"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == names
    info = RunInfo.load(out / "mlp.1-topk-k_4")
    assert info.store == str((out / "eval-store").resolve()) and info.hook == "mlp.1"
    assert info.hook_module == "model.layers.1.mlp" and info.model == str(tiny_llama_dir.resolve())
    config = json.loads((out / "resid.1-sae-l1_5" / "config.json").read_text())
    assert config["training"]["hook"] == ["resid.1", "mlp.1"] and config["training"]["store"] is None
    assert TrainConfig.from_dict(config["training"]).hook == ("resid.1", "mlp.1")
    # the held-out store: contexts 0, 20, 40 … of the packed corpus, all in its eval split
    store = ActivationStore(out / "eval-store")
    packed = list(pack_contexts(iter_documents(CORPUS), load_model(str(tiny_llama_dir)).tokenizer, 32))
    assert store.n_contexts == 8 and store.count("eval") == 8 * 31 and store.count("train") == 0
    assert store.context(3)["tokens"].tolist() == packed[60]
    assert cli_main(["evaluate", "--run", str(out), "--ce-contexts", "4"]) == 0
    table = (out / "eval.md").read_text()
    assert all(f"| {n} |" in table for n in names)
    mlp = json.loads((out / "mlp.1-sae-l1_5" / "eval.json").read_text())
    assert mlp["hook"] == "model.layers.1.mlp" and mlp["reconstruction"]["n_tokens"] == 8 * 31
    assert mlp["spliced"]["n_contexts"] == 4


def _run(args: list[str], **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sae_kit.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kwargs)


def wait_for_checkpoint(out: Path, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint" / "state.json").is_file():
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared in {out} (exit {proc.poll()})")


def test_sigkill_then_resume_reaches_the_same_weights(tiny_llama_dir, tmp_path):
    """Kill a real on-the-fly run with SIGKILL after its first checkpoint; --resume ends bit-identical."""
    full = _run(fly_args(tiny_llama_dir, tmp_path / "full"))
    killed = _run(fly_args(tiny_llama_dir, tmp_path / "killed"))
    wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert full.wait(timeout=300) == 0, full.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "sweep.json").exists()
    resumed = _run(fly_args(tiny_llama_dir, tmp_path / "killed", "--resume"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    for name in ("resid.1-sae-l1_5", "resid.1-topk-k_4", "mlp.1-sae-l1_5", "mlp.1-topk-k_4"):
        a, b = (load_autoencoder(tmp_path / run / name).state_dict() for run in ("full", "killed"))
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


@pytest.mark.parametrize("args, message", [
    (["--store", "s", "--model", "m"], "give either --store (train from an activation store) or --model/--dataset"),
    (["--hook", "resid.1"], "give --store STORE, or --model M (and --dataset D) to train on the fly"),
    (["--model", "m", "--hook", "resid.1"], "on the fly, say how long to train: --tokens N"),
    (["--store", "s", "--hook", "a", "--hook", "b"], "several --hook values train on the fly only"),
    (["--model", "m", "--tokens", "1k", "--buffer-batches", "1"], "--buffer-batches must be at least 2"),
])
def test_source_settings_errors_are_one_line(args, message, tmp_path, capsys):
    assert cli_main(["train", "--out", str(tmp_path / "o"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sae-kit train: error: " + message)


def test_old_one_hook_configs_still_load():
    saved = {"store": "s", "out": "o", "hook": "resid.1"}  # config.json of a run before hooks could be several
    cfg = TrainConfig.from_dict(saved)
    assert cfg.hook == "resid.1" and cfg.hooks == ("resid.1",) and cfg.to_dict()["hook"] == "resid.1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_one_gpu_the_activations_never_leave_it(tiny_llama_dir, tmp_path):
    loaded = load_model(str(tiny_llama_dir), device="cuda")
    names = resolve_hooks(loaded.model, ["resid.1"])
    stream = ActivationStream(loaded, names, CORPUS, context_len=32, lm_batch=4, batch_size=64, buffer_batches=4,
                              seed=0, device=torch.device("cuda"))
    batch = next(stream.batches())
    assert batch[names[0]].is_cuda and stream.storage[names[0]].is_cuda
    [run] = train(TrainConfig(store=None, out=str(tmp_path / "gpu"), model=str(tiny_llama_dir), hook="resid.1",
                              tokens=1024, batch_size=128, expansion=2, context_len=32, lm_batch_size=4,
                              buffer_batches=4, eval_contexts=4, norm_estimation_tokens=256, device="cuda"),
                  progress=False)
    assert load_autoencoder(run).d_sae == 64


def test_one_process_collectives_are_no_ops_and_errors_stay_plain():
    from sae_kit.errors import SaeKitError
    from sae_kit.training.distributed import SINGLE

    x = torch.arange(3.0)
    assert SINGLE.all_reduce_(x) is x and SINGLE.all_gather(x)[0] is x and not SINGLE.enabled and SINGLE.is_main
    assert SINGLE.first_failure(None) is None and SINGLE.first_failure(7) == 7
    SINGLE.agree(None)
    with pytest.raises(SaeKitError, match="^bad batch$"):
        SINGLE.agree("bad batch")
    assert SINGLE.device("cpu") == torch.device("cpu")
