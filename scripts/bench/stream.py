"""Benchmark: training on the fly against a bare forward pass to the hook, and SAELens' own on-the-fly trainer.

Side by side in one run, interleaved rounds (machine load hits all alike), on the same model,
hook and corpus:
  (a) bare forward: the language model run to the hook (stopping there) over LM batches of
      contexts, nothing else: the floor for any on-the-fly trainer;
  (b) sae-kit on the fly: `sae_kit.training.fit` fed by `ActivationStream` (forward, mixing buffer,
      shuffled batches) training an L1 SAE, steady state (after the first buffer fill);
  (t) sae-kit from memory: the same SAE steps on batches already in memory (what (b) costs on
      top of (a)); the ideal on-the-fly rate is then 1 / (1/a + 1/t);
  (c) SAELens: its `LanguageModelSAETrainingRunner` on the same SAE and model, in a side
      virtualenv the script creates and reuses (`--peers`, default /work/main/.venv-peers, with
      `pip install sae-lens`); SAELens cannot read our GGUF file (its HookedProxyLM loads the
      tokenizer without `gguf_file`), so the model is saved once as a plain Hugging Face
      directory that both sides load. Steady-state tokens/s from two run lengths.
With --sparse-start L0, (b) and (t) start the L1 SAE with its encoder bias shifted so that L0 ≈ L0
on the first real rows: the code of a trained SAE, where a long run spends nearly all its steps
(from init the L1 code is dense, L0 ≈ d_sae / 2, until λ has warmed up, and every kernel is dense).

    python scripts/bench/stream.py --tokens 32k                       # SmolLM2-135M, resid.8, d_sae 4608
    python scripts/bench/stream.py --tokens 32k --sparse-start 32 --no-saelens   # at trained sparsity
    python scripts/bench/stream.py --hook resid.2 --d-sae 512 --batch-size 512 --tokens 2k --repeats 1 --no-saelens  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from sae_kit.config import parse_count
from sae_kit.lm.corpus import CorpusSpec
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model
from sae_kit.training import fit, make_slot
from sae_kit.training.input_stats import InputStats
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.specs import model_specs
from sae_kit.training.stream import ActivationStream, lm_batches

sys.path.insert(0, str(Path(__file__).parent))
from train import sparse_start_  # noqa: E402  (the same start as the training benchmark's --sparse-start)

PEER_SCRIPT = Path(__file__).with_name("_saelens_stream.py")


def bare_forward(loaded, names, args, n_tokens: int) -> float:
    """tokens/s of the forward pass alone, over this many training tokens (BOS excluded, as served)."""
    source = lm_batches(CorpusSpec(), loaded.tokenizer, args.context_len, args.lm_batch)
    next(source)  # warm-up
    seen, start = 0, time.perf_counter()
    while seen < n_tokens:
        _, contexts = next(source)
        run_to_hooks(loaded.model, torch.tensor(contexts), names)
        seen += len(contexts) * (args.context_len - 1)
    return seen / (time.perf_counter() - start)


def sae_slot(args, d_in: int, rows: torch.Tensor):
    """A fresh L1 SAE on `rows` [n, d_in] (real activations): at init, or with --sparse-start at L0 ≈ that."""
    cfg = TrainConfig(store="-", out="-", d_sae=args.d_sae, batch_size=args.batch_size, lr=1e-3, log_every=50,
                      checkpoint_every_tokens=None, b_dec_init="zeros")
    stats = InputStats(scale=1.0, mean=[0.0] * d_in, geometric_median=None, n_tokens=0)
    slot = make_slot(model_specs(cfg, d_in)[0], cfg, torch.device("cpu"), 1000, stats)
    if args.sparse_start:
        sparse_start_(slot.model, rows, args.sparse_start / args.d_sae)
    return cfg, stats, slot


def on_the_fly(loaded, names, args, n_steps: int) -> float:
    """tokens/s of on-the-fly training in steady state. The first round is not timed: it serves
    half of the first fill (C rows); every later round computes C/2 new rows and serves C/2, so
    the timed batches pay for exactly their own forward passes."""
    d_in = int(run_to_hooks(loaded.model, torch.zeros(1, 2, dtype=torch.long), names)[names[0]].shape[-1])
    stream = ActivationStream(loaded, names, CorpusSpec(), context_len=args.context_len, lm_batch=args.lm_batch,
                              batch_size=args.batch_size, buffer_batches=args.buffer_batches, seed=0,
                              device=torch.device("cpu"))
    batches = stream.batches()
    first_round = [next(batches) for _ in range(args.buffer_batches // 2)]  # the first fill happens here
    cfg, stats, slot = sae_slot(args, d_in, first_round[0][names[0]])
    slot.key = names[0]  # the stream's batches are {module name: rows}
    fit(cfg, [slot], lambda skip: iter(first_round), len(first_round), stats, device=torch.device("cpu"), progress=False)
    per_round = args.buffer_batches // 2
    n_steps = max(per_round, n_steps // per_round * per_round)  # whole rounds
    start = time.perf_counter()
    fit(cfg, [slot], lambda skip: batches, n_steps, stats, device=torch.device("cpu"), progress=False)
    return n_steps * args.batch_size / (time.perf_counter() - start)


def real_rows(loaded, names, args) -> list[torch.Tensor]:
    """Two batches [batch_size, d_in] of real activations at the hook, for (t)."""
    stream = ActivationStream(loaded, names, CorpusSpec(), context_len=args.context_len, lm_batch=args.lm_batch,
                              batch_size=args.batch_size, buffer_batches=2, seed=1, device=torch.device("cpu"))
    batches = stream.batches()
    return [next(batches)[names[0]].clone() for _ in range(2)]


def from_memory(args, d_in: int, n_steps: int, pool: list[torch.Tensor]) -> float:
    cfg, stats, slot = sae_slot(args, d_in, pool[0])
    fit(cfg, [slot], lambda skip: iter(pool * 1), 2, stats, device=torch.device("cpu"), progress=False)
    start = time.perf_counter()
    fit(cfg, [slot], lambda skip: (pool[i % 2] for i in range(n_steps)), n_steps, stats, device=torch.device("cpu"),
        progress=False)
    return n_steps * args.batch_size / (time.perf_counter() - start)


def ensure_peers(path: Path) -> Path | None:
    """The side virtualenv with SAELens (created with `python -m venv` and `pip install sae-lens` if missing)."""
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} with sae-lens (once) …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    probe = subprocess.run([str(python), "-c", "import sae_lens"], capture_output=True)
    if probe.returncode:
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "sae-lens"], capture_output=True, text=True)
        if install.returncode:
            print(f"could not install sae-lens: {install.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
    return python


def saelens(args, hf_dir: Path, module: str, d_in: int, peers: Path) -> dict | None:
    """SAELens' steady-state on-the-fly tokens/s (from two run lengths), run in the side virtualenv."""
    python = ensure_peers(peers)
    if python is None:
        return None
    texts = hf_dir / "texts.jsonl"
    if not texts.exists():
        from sae_kit.lm.corpus import python_docstrings

        texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in python_docstrings()))
    cmd = [str(python), str(PEER_SCRIPT), "--model", str(hf_dir), "--hook", module, "--d-in", str(d_in),
           "--d-sae", str(args.d_sae), "--batch-size", str(args.batch_size), "--context-len", str(args.context_len),
           "--lm-batch", str(args.lm_batch), "--buffer-batches", str(args.buffer_batches), "--texts", str(texts),
           "--steps", str(args.steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hook", default="resid.8")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--lm-batch", type=int, default=16, help="contexts per forward pass")
    parser.add_argument("--buffer-batches", type=int, default=4)
    parser.add_argument("--tokens", type=parse_count, default=32768, help="timed tokens per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best counts")
    parser.add_argument("--peers", type=Path, default=Path("/work/main/.venv-peers"), help="side virtualenv with sae-lens")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-stream"))
    parser.add_argument("--no-saelens", action="store_true")
    parser.add_argument("--sparse-start", type=int, default=0, metavar="L0",
                        help="start (b) and (t) at L0 ≈ this (a trained SAE's code) instead of at init")
    args = parser.parse_args()
    args.steps = max(2, args.tokens // args.batch_size)
    loaded = load_model(args.model, device="cpu")
    names = resolve_hooks(loaded.model, [args.hook])
    d_in = int(run_to_hooks(loaded.model, torch.zeros(1, 2, dtype=torch.long), names)[names[0]].shape[-1])
    pool = real_rows(loaded, names, args)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, measure in (("bare forward", lambda: bare_forward(loaded, names, args, args.tokens)),
                              ("sae-kit on the fly", lambda: on_the_fly(loaded, names, args, args.steps)),
                              ("sae-kit SAE steps from memory", lambda: from_memory(args, d_in, args.steps, pool))):
            best[name] = max(best.get(name, 0.0), measure())
    ideal = 1 / (1 / best["bare forward"] + 1 / best["sae-kit SAE steps from memory"])
    rows = [f"{loaded.name} to {args.hook} ({names[0]}), d_in {d_in}, d_sae {args.d_sae}, batch {args.batch_size}, "
            f"contexts of {args.context_len}, {args.lm_batch} per forward, buffer {args.buffer_batches} batches, "
            f"{torch.get_num_threads()} threads; SAE "
            f"{f'started at L0 ≈ {args.sparse_start}' if args.sparse_start else 'from init'}; best of {args.repeats} interleaved rounds of {args.tokens:,} tokens", "",
            "| | tokens/s | × bare forward |", "|---|---:|---:|"]
    for name, rate in best.items():
        rows.append(f"| {name} | {rate:,.0f} | {rate / best['bare forward']:.2f} |")
    rows.append(f"| ideal on the fly, 1/(1/forward + 1/SAE steps) | {ideal:,.0f} | {ideal / best['bare forward']:.2f} |")
    print("\n".join(rows), flush=True)
    print(f"\non the fly / ideal: {best['sae-kit on the fly'] / ideal:.2f} (the buffer's own overhead)", flush=True)
    if args.no_saelens:
        return
    peer = saelens(args, plain_copy(loaded, args.work / "model-hf"), names[0], d_in, args.peers)
    if peer and "tokens_per_s" in peer:
        print(f"| SAELens {peer['version']} on the fly (LanguageModelSAETrainingRunner) | {peer['tokens_per_s']:,.0f} | "
              f"{peer['tokens_per_s'] / best['bare forward']:.2f} |   (not interleaved: measured after the rows above)")
    elif peer:
        print(f"SAELens could not run: {peer['error']}")


def plain_copy(loaded, hf_dir: Path) -> Path:
    """The model as a plain Hugging Face directory (SAELens' loader cannot take a GGUF file)."""
    if (hf_dir / "config.json").exists():
        return hf_dir
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantised on load already: plain float weights
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.model.state_dict())
    hf_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(hf_dir)
    loaded.tokenizer.save_pretrained(hf_dir)
    return hf_dir


if __name__ == "__main__":
    main()
