"""One peer trainer on saved batches, run by scripts/bench/train.py inside the peer's own virtualenv.

Imports only torch, safetensors and the peer (never sae_kit). Reads `x` [n, batch, d_in] (float32,
already scaled to E‖x‖ = √d_in) from --batches; for each dtype, after a short throw-away run, a fresh model trains --warmup +
--steps steps on batches 0, 1, …, and the last --steps of them are timed (from the moment the
trainer asks for batch --warmup to the end: start-up costs stay out); FVU and L0 of that model on
the last saved batch (never trained on). Prints one JSON line
per dtype: {"dtype", "tokens_per_s", "fvu", "l0", "note"}.

Peers and what runs:
  saelens     SAELens' own `SAETrainer.fit` on its TrainingSAE of the architecture (its defaults;
              k, λ as given), autocast=True for bfloat16;
  dictionary  dictionary_learning's trainer `.update(step, x)` (its defaults; k as given), under
              torch.autocast for bfloat16. Its package imports nnsight for ActivationBuffer only,
              which these trainers do not use: a stub module stands in for it;
  sparsify    EleutherAI sparsify's `SparseCoder` forward (FVU loss, its default) + backward +
              its default optimizer (schedule-free SignSGD, lr 5e-3/√(d_sae/2¹⁴)) with the
              parallel decoder gradient removed and unit-norm decoder, as its Trainer does per
              step; its Trainer itself hooks a language model, which this benchmark does not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import types

import torch
from safetensors.torch import load_file


def fvu_l0(encode, decode, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        z = encode(x)
        x_hat = decode(z)
        fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        return fvu, float((z != 0).float().sum(-1).mean())


class Timed:
    """Batches 0, 1, … of `batches`, noting the time at which batch `mark` is asked for."""

    def __init__(self, batches: torch.Tensor, n: int, mark: int):
        self.batches, self.n, self.mark, self.started = batches, n, mark, None

    def __iter__(self):
        for i in range(self.n):
            if i == self.mark:
                self.started = time.perf_counter()
            yield self.batches[i]

    def seconds(self) -> float:
        return time.perf_counter() - self.started


@contextlib.contextmanager
def quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
        yield


# -- SAELens ---------------------------------------------------------------------------------------

def saelens_run(arch, batches, steps, dtype, args):
    import sae_lens
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in, d_sae, k = batches.shape[-1], args.d_sae, args.k
    common = {"d_in": d_in, "d_sae": d_sae, "normalize_activations": "none"}
    configs = {
        "sae": lambda: sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(
            l1_coefficient=args.l1, l1_warm_up_steps=max(1, steps // 20), **common)),
        "topk": lambda: sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=k, **common)),
        "batchtopk": lambda: sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(k=k, **common)),
        "jumprelu": lambda: sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(**common)),
        "gated": lambda: sae_lens.GatedTrainingSAE(sae_lens.GatedTrainingSAEConfig(l1_coefficient=args.l1, **common)),
        "matryoshka": lambda: sae_lens.MatryoshkaBatchTopKTrainingSAE(sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            k=k, matryoshka_widths=[d_sae // 16, d_sae // 8, d_sae // 4, d_sae // 2, d_sae], **common)),
    }
    sae = configs[arch]()
    cfg = SAETrainerConfig(total_training_samples=steps * batches.shape[1], train_batch_size_samples=batches.shape[1],
                           lr=args.lr, lr_end=args.lr, lr_decay_steps=max(1, steps // 5), adam_beta1=0.9,
                           adam_beta2=0.999, autocast=dtype == "bfloat16", n_batches_for_norm_estimate=1)
    timer = Timed(batches, steps, args.warmup)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(timer))
    with quiet():
        trainer.fit()
    seconds = timer.seconds()
    sae.eval()
    return seconds, (sae.encode, sae.decode), ""


# -- dictionary_learning -----------------------------------------------------------------------------

def dictionary_run(arch, batches, steps, dtype, args):
    if "nnsight" not in sys.modules:  # only its ActivationBuffer needs nnsight (a language-model wrapper)
        stub = types.ModuleType("nnsight")
        stub.LanguageModel = object
        sys.modules["nnsight"] = stub
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer

    d_in, d_sae = batches.shape[-1], args.d_sae
    # its defaults, but the lr warm-up of 1,000 steps must be shorter than the run (it asserts so)
    common = {"steps": steps, "activation_dim": d_in, "dict_size": d_sae, "layer": 0, "lm_name": "bench",
              "device": "cpu", "warmup_steps": 0}
    sparsity = {"sparsity_warmup_steps": None}
    make = {"batchtopk": lambda: BatchTopKTrainer(k=args.k, **common),
            "jumprelu": lambda: JumpReluTrainer(**common, **sparsity),
            "gated": lambda: GatedSAETrainer(**common, **sparsity)}[arch]
    trainer = make()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    timer = Timed(batches, steps, args.warmup)
    with quiet():
        for step, x in enumerate(timer):
            with autocast:
                trainer.update(step, x)
    seconds = timer.seconds()
    ae = trainer.ae.eval()
    return seconds, (ae.encode, ae.decode), ""


# -- sparsify --------------------------------------------------------------------------------------

def sparsify_run(arch, batches, steps, dtype, args):
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its Triton decoder is CUDA-only; CPU: embedding_bag
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    sae = SparseCoder(batches.shape[-1], SparseCoderConfig(num_latents=args.d_sae, k=args.k), device="cpu")
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (args.d_sae / 2**14) ** 0.5}]),
                              momentum=0.95)
    opt.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    timer = Timed(batches, steps, args.warmup)
    for x in timer:
        with autocast:
            out = sae(x)
        out.fvu.backward()
        sae.set_decoder_norm_to_unit_norm()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    seconds = timer.seconds()
    opt.eval()

    def encode(x):
        enc = sae.encode(x)
        return torch.zeros(x.shape[0], args.d_sae).scatter_(-1, enc.top_indices, enc.top_acts)

    return seconds, (encode, lambda z: z @ sae.W_dec + sae.b_dec), "SparseCoder step (its Trainer hooks a model)"


RUNS = {"saelens": saelens_run, "dictionary": dictionary_run, "sparsify": sparsify_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", choices=sorted(RUNS), required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--d-sae", type=int, required=True)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l1", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    torch.manual_seed(0)
    batches = load_file(args.batches)["x"]
    held_out = batches[-1]
    run = RUNS[args.peer]
    for dtype in args.dtypes.split(","):
        # a throw-away run first: the first run in a process is slower (the allocator's first
        # mappings of big buffers), and the peers start in fresh processes
        run(args.arch, batches, args.warmup + 1, dtype, args)
        seconds, (encode, decode), note = run(args.arch, batches, args.warmup + args.steps, dtype, args)
        fvu, l0 = fvu_l0(encode, decode, held_out)
        print(json.dumps({"dtype": dtype, "tokens_per_s": args.steps * batches.shape[1] / seconds, "fvu": fvu,
                          "l0": l0, "note": note}), flush=True)


if __name__ == "__main__":
    main()
