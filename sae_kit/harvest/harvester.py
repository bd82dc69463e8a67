"""Harvest: model + corpus + hook points -> activation store.

One forward pass per batch of contexts captures every requested hook and stops after the last
one. Shards hold whole contexts and batches never straddle a shard, so a resumed harvest
computes exactly the batches an uninterrupted one would (bitwise-identical store).
"""

from __future__ import annotations

import errno
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.harvest.store import MANIFEST, StoreWriter, read_manifest
from sae_kit.lm.corpus import CorpusSpec, check_corpus, iter_documents, pack_contexts, special_token_ids
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import DTYPES, LoadedModel, check_before_loading, load_model, normalise_spec, parse_dtype

META_BYTES_PER_TOKEN = 12  # tokens, context, position as int32


@dataclass(frozen=True)
class HarvestConfig(JsonConfig):
    """Everything that defines a harvest; saved in the store manifest."""

    nonempty = ('out', 'model')

    out: str
    """Store directory to write."""
    model: str = "default"
    """'default' (embedded SmolLM2-135M), a local HF directory, a .gguf file or a hub id."""
    hooks: tuple[str, ...] = ("resid.8",)
    """Module names, globs or aliases (resid.L, mlp.L, attn.L, mlp_in.L = an MLP's input); repeat for
    several: all share one forward pass."""
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    """Which documents to read."""
    tokens: int = 250_000
    """Tokens to harvest (rounded up to whole contexts); fewer if the corpus runs out."""
    context_len: int = 128
    """Tokens per context, BOS included."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the activations in the store (bfloat16 halves the disk use)."""
    shard_tokens: int = 32_768
    """Tokens per shard (rounded down to whole batches of contexts)."""
    batch_size: int = 16
    """Contexts per forward pass."""
    device: str | None = None
    """Device for the model (default: CUDA if present, else CPU)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Dtype of the language model's weights (default float32)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise SaeKitError(f"unknown storage dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("tokens", "context_len", "shard_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.context_len < 2:
            raise SaeKitError(f"context length {self.context_len} is too short; use at least 2 (BOS and one token)")
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
    if resuming:
        stored = read_manifest(out)
        _check_resume_settings(stored, cfg)
        if stored.get("complete"):
            print(f"{out} is already complete; nothing to do", file=sys.stderr)
            return out
    # Everything that can be checked without the model, before the ~17 s it takes to load it.
    check_corpus(cfg.corpus)
    if loaded is None:
        facts = check_before_loading(cfg.model, cfg.hooks, cfg.context_len)
        if facts is not None and facts.d_model:
            per_token = len(cfg.hooks) * facts.d_model * parse_dtype(cfg.dtype).itemsize + META_BYTES_PER_TOKEN
            _check_disk(out, cfg.n_contexts * cfg.context_len * per_token, quiet=True)
        loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
    _check_context_len(loaded, cfg.context_len)
    module_names = resolve_hooks(loaded.model, list(cfg.hooks))
    dims = _hook_dims(loaded.model, module_names)
    manifest = planned_manifest(cfg, loaded, module_names, dims)
    done_contexts = read_manifest(out)["n_contexts"] if resuming else 0
    bytes_per_token = sum(dims.values()) * parse_dtype(cfg.dtype).itemsize + META_BYTES_PER_TOKEN
    _check_disk(out, max(0, cfg.n_contexts - done_contexts) * cfg.context_len * bytes_per_token)
    if resuming:
        writer = StoreWriter.resume(out)
        _check_resume_matches(writer.manifest, manifest)
    else:
        writer = StoreWriter.create(out, manifest)
    write_shards(cfg, loaded, module_names, dims, writer, done_contexts, progress)
    if writer.n_contexts < cfg.n_contexts:
        print(f"the corpus holds only {writer.n_contexts} contexts of {cfg.context_len} tokens: "
              f"harvested {writer.manifest['n_tokens']} tokens of the {cfg.tokens} asked for", file=sys.stderr)
    writer.finish(corpus_exhausted=writer.n_contexts < cfg.n_contexts)
    return out


def planned_manifest(cfg: HarvestConfig, loaded: LoadedModel, module_names: list[str], dims: dict[str, int]) -> dict:
    """What the store's manifest records about its making (a resumed harvest must match it)."""
    tokenizer = loaded.tokenizer
    bos, eos = special_token_ids(tokenizer)
    requested = _requested_names(loaded.model, cfg.hooks, module_names)
    return {
        "sae_kit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": loaded.identity(),
        "tokenizer": {"name_or_path": getattr(tokenizer, "name_or_path", None), "vocab_size": len(tokenizer),
                      "bos_token_id": bos, "eos_token_id": eos},
        "corpus": cfg.corpus.to_dict(),
        "context_len": cfg.context_len,
        "prepend_bos": True,
        "hooks": [{"name": n, "requested": requested[n], "d": dims[n], "dtype": cfg.dtype} for n in module_names],
        "requested_tokens": cfg.tokens,
        "harvest": {k: v for k, v in asdict(cfg).items() if k not in ("corpus",)},
    }


def write_shards(cfg: HarvestConfig, loaded: LoadedModel, module_names: list[str], dims: dict[str, int],
                 writer: StoreWriter, done_contexts: int, progress: bool) -> None:
    """Pack the corpus into contexts, skip the `done_contexts` already stored, and write the rest
    shard by shard: one forward pass per batch of contexts, stopping after the last hook."""
    storage_dtype = parse_dtype(cfg.dtype)
    contexts = pack_contexts(iter_documents(cfg.corpus), loaded.tokenizer, cfg.context_len)
    contexts = islice(contexts, done_contexts, cfg.n_contexts)  # resume: skip what is stored
    bar = tqdm(total=cfg.n_contexts * cfg.context_len, initial=done_contexts * cfg.context_len, unit="tok",
               unit_scale=True, desc="harvest", disable=not progress, dynamic_ncols=True)
    next_context = done_contexts
    try:
        while shard_contexts := list(islice(contexts, cfg.contexts_per_shard)):
            pieces: dict[str, list[torch.Tensor]] = {n: [] for n in module_names}
            for b in range(0, len(shard_contexts), cfg.batch_size):
                input_ids = torch.tensor(shard_contexts[b : b + cfg.batch_size], dtype=torch.long)
                acts = run_to_hooks(loaded.model, input_ids.to(loaded.device), module_names)
                for name in module_names:
                    pieces[name].append(acts[name].reshape(-1, dims[name]).to("cpu", storage_dtype))
                bar.update(input_ids.numel())
            ids = torch.tensor(shard_contexts, dtype=torch.int32)
            n_ctx, length = ids.shape
            tensors = {name: torch.cat(parts) for name, parts in pieces.items()}
            tensors["tokens"] = ids.reshape(-1)
            tensors["context"] = torch.arange(next_context, next_context + n_ctx, dtype=torch.int32).repeat_interleave(length)
            tensors["position"] = torch.arange(length, dtype=torch.int32).repeat(n_ctx)
            try:
                writer.write_shard(tensors)
            except OSError as err:
                raise _write_failure(err, writer) from err
            next_context += n_ctx
    finally:
        bar.close()


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


def _check_resume_settings(stored: dict, cfg: HarvestConfig) -> None:
    """A resumed harvest (also of a store that is already complete) must be the same harvest:
    checked against the manifest before any model loads."""
    before = stored.get("harvest", {})
    planned = {"context_len": cfg.context_len, "corpus": cfg.corpus.to_dict(), "hooks": list(cfg.hooks),
               "dtype": cfg.dtype, "requested_tokens": cfg.tokens, "model": normalise_spec(cfg.model)}
    recorded = {"context_len": stored.get("context_len"), "corpus": stored.get("corpus"),
                "hooks": list(before.get("hooks", [h.get("requested") or h["name"] for h in stored.get("hooks", [])])),
                "dtype": before.get("dtype", cfg.dtype), "requested_tokens": stored.get("requested_tokens", cfg.tokens),
                "model": stored.get("model", {}).get("spec")}
    differ = [k for k in planned if recorded[k] != planned[k]]
    if differ:
        detail = ", ".join(f"{k}: store {recorded[k]!r} vs now {planned[k]!r}" for k in differ)
        raise SaeKitError(f"--resume with different settings ({detail}); resume with the store's settings, "
                          "or harvest into another --out")


def _check_context_len(loaded: LoadedModel, context_len: int) -> None:
    limit = next((getattr(loaded.model.config, name) for name in ("max_position_embeddings", "n_positions")
                  if isinstance(getattr(loaded.model.config, name, None), int)), None)
    if limit and context_len > limit:
        raise SaeKitError(f"--context-len {context_len} is longer than the model supports ({limit} positions); "
                          f"use at most {limit}")


def _write_failure(err: OSError, writer: StoreWriter) -> SaeKitError:
    """A failed shard write as one line: which shard, why, and what the store still holds."""
    shards, tokens = len(writer.manifest["shards"]), writer.manifest["n_tokens"]
    kept = f"the store keeps its {shards} complete shard(s) ({tokens:,} tokens)"
    if err.errno == errno.ENOSPC:
        return SaeKitError(f"the disk filled up while writing shard {shards} of {writer.path}; {kept}: free some "
                           "space and continue with --resume")
    return SaeKitError(f"writing shard {shards} of {writer.path} failed ({err.strerror or err}); {kept}: fix the "
                       "cause and continue with --resume")


def _check_resume_matches(stored: dict, planned: dict) -> None:
    for key, what in (("context_len", "context length"), ("corpus", "corpus"), ("hooks", "hooks")):
        if stored.get(key) != planned[key]:
            raise SaeKitError(f"--resume: the store was harvested with a different {what} "
                              f"({stored.get(key)!r} vs {planned[key]!r}); use the original settings or another --out")
    if stored["model"]["config_sha256"] != planned["model"]["config_sha256"]:
        raise SaeKitError(f"--resume: the store was harvested from model {stored['model']['spec']!r}, "
                          f"not {planned['model']['spec']!r}; use the original --model")


DISK_MARGIN = 64 << 20
"""Room left free beyond the store's estimated size (manifests, temporary shard files, the rest of the system)."""


def _check_disk(out: Path, needed: int, quiet: bool = False) -> None:
    existing = next(p for p in (out, *out.resolve().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if not quiet:
        print(f"the store will take about {_human(needed)} more on disk ({_human(free)} free)", file=sys.stderr)
    if needed + DISK_MARGIN > free:
        raise SaeKitError(f"not enough disk space at {out}: the store needs about {_human(needed)} plus a "
                          f"{_human(DISK_MARGIN)} safety margin, and only {_human(free)} is free; free some space, "
                          "lower --tokens, or use --store-dtype bfloat16")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"
