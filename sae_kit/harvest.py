"""Harvest: model + corpus + hook points -> activation store.

One forward pass per batch of contexts captures every requested hook and stops after the last
one. Shards hold whole contexts and batches never straddle a shard, so a resumed harvest
computes exactly the batches an uninterrupted one would (bitwise-identical store).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.corpus import CorpusSpec, iter_documents, pack_contexts, special_token_ids
from sae_kit.errors import SaeKitError
from sae_kit.hooks import format_hook_points, list_hook_points, resolve_hooks, run_to_hooks
from sae_kit.models import DTYPES, LoadedModel, load_model, parse_dtype
from sae_kit.store import MANIFEST, ActivationStore, StoreWriter, read_manifest

META_BYTES_PER_TOKEN = 12  # tokens, context, position as int32


@dataclass(frozen=True)
class HarvestConfig:
    """Everything that defines a harvest; saved in the store manifest."""

    out: str
    """Store directory to write."""
    model: str = "default"
    """'default' (embedded SmolLM2-135M), a local HF directory, a .gguf file or a hub id."""
    hooks: tuple[str, ...] = ("resid.8",)
    """Module names, globs or aliases (resid.L, mlp.L, attn.L); all share one forward pass."""
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    """Which documents to read."""
    tokens: int = 250_000
    """Tokens to harvest (rounded up to whole contexts); fewer if the corpus runs out."""
    context_len: int = 128
    """Tokens per context, BOS included."""
    dtype: str = "float32"
    """Storage dtype of the activations: float32, bfloat16 or float16."""
    shard_tokens: int = 32_768
    """Tokens per shard (rounded down to whole batches of contexts)."""
    batch_size: int = 16
    """Contexts per forward pass."""
    device: str | None = None
    """Device for the model (default: CUDA if present, else CPU)."""
    model_dtype: str | None = None
    """Dtype for the model weights (default float32)."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise SaeKitError(f"unknown storage dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("tokens", "context_len", "shard_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.hooks:
            raise SaeKitError("give at least one --hook (e.g. resid.8); `sae-kit hooks` lists them")

    @property
    def n_contexts(self) -> int:
        return math.ceil(self.tokens / self.context_len)

    @property
    def contexts_per_shard(self) -> int:
        per_shard = max(1, self.shard_tokens // self.context_len)
        return max(self.batch_size, per_shard // self.batch_size * self.batch_size)


def harvest(cfg: HarvestConfig, *, resume: bool = False, overwrite: bool = False, loaded: LoadedModel | None = None,
            progress: bool = True) -> Path:
    """Run the harvest described by `cfg`; returns the store path.

    `resume` continues an interrupted store from its last complete shard; `overwrite`
    replaces an existing store. `loaded` reuses an already loaded model.
    """
    out = Path(cfg.out)
    _check_out_dir(out, resume, overwrite)
    resuming = resume and (out / MANIFEST).is_file()
    if resuming and read_manifest(out).get("complete"):
        print(f"{out} is already complete; nothing to do", file=sys.stderr)
        return out

    loaded = loaded or load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    module_names = resolve_hooks(model, list(cfg.hooks))
    dims = _hook_dims(model, module_names)
    storage_dtype = parse_dtype(cfg.dtype)
    requested = _requested_names(model, cfg.hooks, module_names)
    manifest = {
        "sae_kit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": loaded.identity(),
        "tokenizer": {
            "name_or_path": getattr(tokenizer, "name_or_path", None),
            "vocab_size": len(tokenizer),
            "bos_token_id": special_token_ids(tokenizer)[0],
            "eos_token_id": special_token_ids(tokenizer)[1],
        },
        "corpus": cfg.corpus.to_dict(),
        "context_len": cfg.context_len,
        "prepend_bos": True,
        "hooks": [{"name": n, "requested": requested[n], "d": dims[n], "dtype": cfg.dtype} for n in module_names],
        "requested_tokens": cfg.tokens,
        "harvest": {k: v for k, v in asdict(cfg).items() if k not in ("corpus",)},
    }
    done_contexts = read_manifest(out)["n_contexts"] if resuming else 0
    bytes_per_token = sum(dims.values()) * storage_dtype.itemsize + META_BYTES_PER_TOKEN
    _check_disk(out, max(0, cfg.n_contexts - done_contexts) * cfg.context_len * bytes_per_token)
    if resuming:
        writer = StoreWriter.resume(out)
        _check_resume_matches(writer.manifest, manifest)
    else:
        writer = StoreWriter.create(out, manifest)

    contexts = pack_contexts(iter_documents(cfg.corpus), tokenizer, cfg.context_len)
    contexts = islice(contexts, done_contexts, cfg.n_contexts)  # resume: skip what is stored
    device = loaded.device
    bar = tqdm(total=cfg.n_contexts * cfg.context_len, initial=done_contexts * cfg.context_len, unit="tok",
               unit_scale=True, desc="harvest", disable=not progress, dynamic_ncols=True)
    next_context = done_contexts
    try:
        while True:
            shard_contexts = list(islice(contexts, cfg.contexts_per_shard))
            if not shard_contexts:
                break
            pieces: dict[str, list[torch.Tensor]] = {n: [] for n in module_names}
            for b in range(0, len(shard_contexts), cfg.batch_size):
                input_ids = torch.tensor(shard_contexts[b : b + cfg.batch_size], dtype=torch.long)
                acts = run_to_hooks(model, input_ids.to(device), module_names)
                for name in module_names:
                    pieces[name].append(acts[name].reshape(-1, dims[name]).to("cpu", storage_dtype))
                bar.update(input_ids.numel())
            ids = torch.tensor(shard_contexts, dtype=torch.int32)
            n_ctx, length = ids.shape
            tensors = {name: torch.cat(parts) for name, parts in pieces.items()}
            tensors["tokens"] = ids.reshape(-1)
            tensors["context"] = torch.arange(next_context, next_context + n_ctx, dtype=torch.int32).repeat_interleave(length)
            tensors["position"] = torch.arange(length, dtype=torch.int32).repeat(n_ctx)
            writer.write_shard(tensors)
            next_context += n_ctx
    finally:
        bar.close()
    stored = writer.manifest["n_tokens"]
    if writer.n_contexts < cfg.n_contexts:
        print(f"the corpus holds only {writer.n_contexts} contexts of {cfg.context_len} tokens: "
              f"harvested {stored} tokens of the {cfg.tokens} asked for", file=sys.stderr)
    writer.finish(corpus_exhausted=writer.n_contexts < cfg.n_contexts)
    return out


def _hook_dims(model, module_names: list[str]) -> dict[str, int]:
    """Width of each hook's hidden state, from a two-token probe pass."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    return {name: int(t.shape[-1]) for name, t in run_to_hooks(model, probe, module_names).items()}


def _requested_names(model, requested: tuple[str, ...], module_names: list[str]) -> dict[str, str]:
    """Module name -> the name the user gave for it (an alias where one was used)."""
    out = {name: name for name in module_names}
    for item in requested:
        names = resolve_hooks(model, [item])
        if len(names) == 1:
            out[names[0]] = item
    return out


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SaeKitError(f"--out {out} exists and is a file; name a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if resume:
        if not (out / MANIFEST).is_file():
            raise SaeKitError(f"--resume: {out} is not empty but holds no {MANIFEST}; it is not a store")
        return
    if overwrite:
        foreign = [p.name for p in out.iterdir() if not (p.name == MANIFEST or p.name.startswith(("shard-", ".shard-", ".manifest")))]
        if foreign:
            raise SaeKitError(f"--overwrite: {out} holds files that are not part of a store ({', '.join(foreign[:5])}); "
                              "choose another --out")
        for p in out.iterdir():
            p.unlink()
        return
    raise SaeKitError(f"{out} exists and is not empty; pass --resume to continue that harvest, "
                      "--overwrite to replace it, or choose another --out")


def _check_resume_matches(stored: dict, planned: dict) -> None:
    for key, what in (("context_len", "context length"), ("corpus", "corpus"), ("hooks", "hooks")):
        if stored.get(key) != planned[key]:
            raise SaeKitError(f"--resume: the store was harvested with a different {what} "
                              f"({stored.get(key)!r} vs {planned[key]!r}); use the original settings or another --out")
    if stored["model"]["config_sha256"] != planned["model"]["config_sha256"]:
        raise SaeKitError(f"--resume: the store was harvested from model {stored['model']['spec']!r}, "
                          f"not {planned['model']['spec']!r}; use the original --model")


def _check_disk(out: Path, needed: int) -> None:
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    print(f"the store will take about {_human(needed)} more on disk ({_human(free)} free)", file=sys.stderr)
    margin = 64 << 20
    if needed + margin > free:
        raise SaeKitError(f"not enough disk space at {out}: the store needs about {_human(needed)} and only "
                          f"{_human(free)} is free; free some space, lower --tokens, or use --dtype bfloat16")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


# ----------------------------------------------------------------------------- CLI


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model / --device / --model-dtype, shared by every command that loads the LM."""
    parser.add_argument("--model", default="default",
                        help="'default' (embedded SmolLM2-135M), a local HF directory, a .gguf file or a hub id")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA if present)")
    parser.add_argument("--model-dtype", default=None, choices=list(DTYPES), help="model weights dtype (default float32)")


def add_cli(subparsers) -> None:
    hooks = subparsers.add_parser("hooks", help="list every hookable module of a model with its output shape")
    add_model_args(hooks)
    hooks.set_defaults(func=_run_hooks)

    defaults = {f.name: f.default for f in fields(HarvestConfig) if f.name not in ("corpus", "out")}
    corpus = CorpusSpec()
    p = subparsers.add_parser("harvest", help="capture activations at hook points into a sharded safetensors store")
    add_model_args(p)
    p.add_argument("--dataset", default=corpus.dataset,
                   help="'python-docs' (stdlib docstrings), a local .txt/.jsonl/.parquet file or folder, or a hub dataset")
    p.add_argument("--dataset-config", default=corpus.dataset_config, help="hub dataset configuration")
    p.add_argument("--split", default=corpus.split, help="dataset split (default train)")
    p.add_argument("--text-column", default=corpus.text_column, help="column with the text (default text)")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset")
    p.add_argument("--hook", action="append", dest="hooks",
                   help="module name, glob or alias (resid.L, mlp.L, attn.L); repeat for several (default resid.8)")
    p.add_argument("--tokens", type=int, default=defaults["tokens"], help="tokens to harvest (default %(default)s)")
    p.add_argument("--context-len", type=int, default=defaults["context_len"], help="tokens per context (default %(default)s)")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--dtype", default=defaults["dtype"], choices=list(DTYPES), help="storage dtype (default float32)")
    p.add_argument("--shard-tokens", type=int, default=defaults["shard_tokens"], help="tokens per shard (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="contexts per forward pass (default %(default)s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted harvest in --out")
    group.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    p.set_defaults(func=_run_harvest)

    v = subparsers.add_parser("verify", help="re-hash every shard of a store against its manifest")
    v.add_argument("store", help="store directory")
    v.set_defaults(func=_run_verify)


def _run_hooks(args) -> int:
    loaded = load_model(args.model, device=args.device, dtype=args.model_dtype)
    print(format_hook_points(list_hook_points(loaded.model)))
    return 0


def _run_harvest(args) -> int:
    cfg = HarvestConfig(
        out=args.out, model=args.model, hooks=tuple(args.hooks or ("resid.8",)),
        corpus=CorpusSpec(args.dataset, args.dataset_config, args.split, args.text_column, args.streaming),
        tokens=args.tokens, context_len=args.context_len, dtype=args.dtype, shard_tokens=args.shard_tokens,
        batch_size=args.batch_size, device=args.device, model_dtype=args.model_dtype,
    )
    path = harvest(cfg, resume=args.resume, overwrite=args.overwrite)
    print(ActivationStore(path))
    return 0


def _run_verify(args) -> int:
    store = ActivationStore(args.store)
    problems = store.verify()
    for problem in problems:
        print(f"BAD {problem}")
    if problems:
        raise SaeKitError(f"{len(problems)} of {len(store.shards)} shards failed verification (listed above); re-harvest them")
    state = "complete" if store.complete else "incomplete (resume it with sae-kit harvest --resume)"
    print(f"OK: {len(store.shards)} shards, {store.n_tokens} tokens, all checksums match; harvest {state}")
    return 0
