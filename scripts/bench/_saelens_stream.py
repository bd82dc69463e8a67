"""Run by scripts/bench/stream.py inside the side virtualenv that has sae-lens (not sae-kit):
SAELens' own on-the-fly training (LanguageModelSAETrainingRunner, HookedProxyLM over a Hugging
Face directory) of a standard L1 SAE. Prints one JSON line with its steady-state tokens/s, from
the difference of two run lengths (so model loading and its norm estimate do not count)."""

import argparse
import contextlib
import json
import os
import time

import torch


def run(args, n_steps: int) -> float:
    from datasets import load_dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens import StandardTrainingSAEConfig

    dataset = load_dataset("json", data_files=args.texts, split="train")
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, l1_coefficient=5.0),
        model_name=args.model, model_class_name="AutoModelForCausalLM", hook_name=args.hook,
        dataset_path=args.texts, is_dataset_tokenized=False, streaming=False, context_size=args.context_len,
        training_tokens=n_steps * args.batch_size, train_batch_size_tokens=args.batch_size,
        # SAELens' buffer holds n_batches_in_buffer × context_size rows (sae_lens 6.54's mixing_buffer call);
        # ours buffer_batches × batch_size: the same number of rows
        n_batches_in_buffer=-(-args.buffer_batches * args.batch_size // args.context_len),
        store_batch_size_prompts=args.lm_batch, device="cpu",
        n_batches_for_norm_estimate=2, logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
        output_path=None, verbose=False, lr=1e-3)
    start = time.perf_counter()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        LanguageModelSAETrainingRunner(cfg, override_dataset=dataset).run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--hook", "--texts"):
        parser.add_argument(name, required=True)
    for name in ("--d-in", "--d-sae", "--batch-size", "--context-len", "--lm-batch", "--buffer-batches", "--steps"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    import sae_lens

    torch.manual_seed(0)
    short = run(args, args.steps)
    long = run(args, 3 * args.steps)
    print(json.dumps({"tokens_per_s": 2 * args.steps * args.batch_size / max(long - short, 1e-9),
                      "short_s": short, "long_s": long, "version": sae_lens.__version__}))


if __name__ == "__main__":
    main()
