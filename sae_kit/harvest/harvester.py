"""Harvest: model + corpus + hook points -> activation store.

One forward pass per batch of contexts captures every requested hook and stops after the last
one. Shards hold whole contexts and batches never straddle a shard, so a resumed harvest
computes exactly the batches an uninterrupted one would (bitwise-identical store).
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from sae_kit import __version__
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.harvest.store import MANIFEST, StoreWriter, merge_rank_manifests, rank_manifest_name, read_manifest
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
            progress: bool = True, ranks=None) -> Path:
    """Run the harvest described by `cfg`; returns the store path.

    `resume` continues an interrupted store from its last complete shard; `overwrite`
    replaces an existing store. `loaded` reuses an already loaded model. `ranks` (a
    `sae_kit.training.distributed.Distributed`, or anything with rank, world_size, is_main,
    barrier() and device()) splits the work over torchrun's processes: every rank packs the same
    context stream and writes the shards whose number is ≡ rank (mod world_size), each shard
    holding the same contexts as in a one-process harvest; rank 0 merges the rank manifests at
    the end, so the store is the one a single process writes.
    """
    rank, world = (ranks.rank, ranks.world_size) if ranks is not None else (0, 1)
    main = rank == 0
    out = Path(cfg.out)
    _check_out_dir(out, resume, overwrite, delete=main)
    if ranks is not None:
        ranks.barrier()  # rank 0 has cleared --overwrite's files before anyone writes
    resuming = resume and (out / rank_manifest_name(rank, world)).is_file()
    written = out / (MANIFEST if (out / MANIFEST).is_file() else rank_manifest_name(rank, world))
    part_done = False
    if resume and written.is_file():
        stored = read_manifest(out, written.name)
        _check_resume_settings(stored, cfg)
        if stored.get("complete") and written.name == MANIFEST:
            if main:
                print(f"{out} is already complete; nothing to do", file=sys.stderr)
            return out
        # This rank's part was complete when another rank was killed: it has nothing to write
        # but must still join the others at the merge (returning here left them waiting).
        part_done = bool(stored.get("complete"))
    if resume:
        _check_resume_world(out, world)
    if not part_done:
        # Everything that can be checked without the model, before the ~17 s it takes to load it.
        check_corpus(cfg.corpus)
        device = ranks.device(cfg.device) if ranks is not None else cfg.device
        if loaded is None:
            facts = check_before_loading(cfg.model, cfg.hooks, cfg.context_len)
            if facts is not None and facts.d_model and main:
                per_token = len(cfg.hooks) * facts.d_model * parse_dtype(cfg.dtype).itemsize + META_BYTES_PER_TOKEN
                _check_disk(out, cfg.n_contexts * cfg.context_len * per_token, quiet=True)
            loaded = load_model(cfg.model, device=device, dtype=cfg.model_dtype)
        _check_context_len(loaded, cfg.context_len)
        module_names = resolve_hooks(loaded.model, list(cfg.hooks))
        dims = hook_dims(loaded.model, module_names)
        manifest = {**planned_manifest(cfg, loaded, module_names, dims), **({"world_size": world} if world > 1 else {})}
        done_contexts = read_manifest(out, rank_manifest_name(rank, world))["n_contexts"] if resuming else 0
        bytes_per_token = sum(dims.values()) * parse_dtype(cfg.dtype).itemsize + META_BYTES_PER_TOKEN
        if main:
            _check_disk(out, max(0, cfg.n_contexts - done_contexts * world) * cfg.context_len * bytes_per_token)
        if resuming:
            writer = StoreWriter.resume(out, rank, world)
            _check_resume_matches(writer.manifest, manifest)
        else:
            writer = StoreWriter.create(out, manifest, rank, world)
        write_shards(cfg, loaded, module_names, dims, writer, progress and main)
        writer.finish(corpus_exhausted=writer.n_contexts < cfg.n_contexts)
    if world > 1:
        ranks.barrier()
        if main:
            merged = merge_rank_manifests(out, corpus_exhausted=None, requested_contexts=cfg.n_contexts)
            n_contexts, n_tokens = merged["n_contexts"], merged["n_tokens"]
        ranks.barrier()  # the merged manifest exists before any rank reads the store
    else:
        n_contexts, n_tokens = writer.n_contexts, writer.manifest["n_tokens"]
    if main and n_contexts < cfg.n_contexts:
        print(f"the corpus holds only {n_contexts} contexts of {cfg.context_len} tokens: "
              f"harvested {n_tokens} tokens of the {cfg.tokens} asked for", file=sys.stderr)
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


def capture_batches(loaded: LoadedModel, contexts: list[list[int]], module_names: list[str], batch_size: int
                    ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One forward pass per `batch_size` contexts, stopping after the last hook: yields
    (input_ids [b, C] on the CPU, {module name: hidden state [b, C, d] on the model's device})."""
    for b in range(0, len(contexts), batch_size):
        input_ids = torch.tensor(contexts[b : b + batch_size], dtype=torch.long)
        yield input_ids, run_to_hooks(loaded.model, input_ids.to(loaded.device), module_names)


def shard_tensors(contexts: list[list[int]], first_context: int, acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of one shard: activations {hook: [n, d]} plus tokens, context and position [n]
    of `contexts` (numbered from `first_context`)."""
    ids = torch.tensor(contexts, dtype=torch.int32)
    n_ctx, length = ids.shape
    tensors = dict(acts)
    tensors["tokens"] = ids.reshape(-1)
    tensors["context"] = torch.arange(first_context, first_context + n_ctx, dtype=torch.int32).repeat_interleave(length)
    tensors["position"] = torch.arange(length, dtype=torch.int32).repeat(n_ctx)
    return tensors


def write_shards(cfg: HarvestConfig, loaded: LoadedModel, module_names: list[str], dims: dict[str, int],
                 writer: StoreWriter, progress: bool) -> None:
    """Pack the corpus into contexts and write this rank's shards, skipping those already stored.

    Shard b holds contexts [b·S, (b+1)·S) (S = contexts_per_shard), as in a one-process harvest;
    rank r of N writes the shards b ≡ r (mod N), so its k-th shard is b = r + k·N, the file number
    `shard_file_name` gives it. One forward pass per batch of contexts, stopping after the last hook."""
    storage_dtype = parse_dtype(cfg.dtype)
    per_shard, rank, world = cfg.contexts_per_shard, writer.rank, writer.world_size
    contexts = islice(pack_contexts(iter_documents(cfg.corpus), loaded.tokenizer, cfg.context_len), cfg.n_contexts)
    done = len(writer.manifest["shards"])
    bar = tqdm(total=cfg.n_contexts * cfg.context_len, initial=done * world * per_shard * cfg.context_len, unit="tok",
               unit_scale=True, desc="harvest", disable=not progress, dynamic_ncols=True)
    block = 0  # the shard number the context stream is at
    try:
        while True:
            target = rank + world * done  # this rank's next shard
            for _ in islice(contexts, (target - block) * per_shard):  # other ranks' shards, and resumed ones
                pass
            block = target
            shard_contexts = list(islice(contexts, per_shard))
            if not shard_contexts:
                break
            pieces: dict[str, list[torch.Tensor]] = {n: [] for n in module_names}
            for input_ids, acts in capture_batches(loaded, shard_contexts, module_names, cfg.batch_size):
                for name in module_names:
                    pieces[name].append(acts[name].reshape(-1, dims[name]).to("cpu", storage_dtype))
                bar.update(input_ids.numel() * world)
            acts = {name: torch.cat(parts) for name, parts in pieces.items()}
            try:
                writer.write_shard(shard_tensors(shard_contexts, block * per_shard, acts))
            except OSError as err:
                raise _write_failure(err, writer) from err
            done, block = done + 1, block + 1
    finally:
        bar.close()


def hook_dims(model, module_names: list[str]) -> dict[str, int]:
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


def _check_resume_world(out: Path, world: int) -> None:
    """A store part-written by N processes resumes with N processes (shard numbers depend on N)."""
    parts = sorted(out.glob("manifest.rank-*.json"))
    before = (json.loads(parts[0].read_text()).get("world_size", len(parts)) if parts
              else 1 if (out / MANIFEST).is_file() else world)
    if before != world:
        raise SaeKitError(f"--resume: {out} was being harvested by {before} process(es), not {world}; resume it "
                          f"with the same count (torchrun --nproc-per-node {before} …, or no torchrun for 1)")


def _check_out_dir(out: Path, resume: bool, overwrite: bool, delete: bool = True) -> None:
    """Refuse an --out that is a file or holds something else; with --overwrite (and `delete`:
    rank 0 only) remove the old store's files."""
    if out.exists() and not out.is_dir():
        raise SaeKitError(f"--out {out} exists and is a file; name a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if resume:
        if not any(out.glob("manifest*.json")):
            raise SaeKitError(f"--resume: {out} is not empty but holds no {MANIFEST}; it is not a store")
        return
    if overwrite:
        foreign = [p.name for p in out.iterdir()
                   if not (p.name.startswith(("manifest", "shard-", ".shard-", ".manifest")))]
        if foreign:
            raise SaeKitError(f"--overwrite: {out} holds files that are not part of a store ({', '.join(foreign[:5])}); "
                              "choose another --out")
        for p in out.iterdir() if delete else ():
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
