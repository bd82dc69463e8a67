"""The activation store: one directory of safetensors shards and a JSON manifest.

Layout (DESIGN.md, "Activation store")::

    STORE/manifest.json
    STORE/shard-00000.safetensors   # {hook name: [n, d], "tokens": [n], "context": [n], "position": [n]}
    STORE/shard-00001.safetensors
    ...

Whole contexts are stored, BOS included; readers skip position 0 by default (BOS activations
have a very large norm and hurt training). Every `eval_every`-th context is held out as the
eval split. Shards are written to a temporary name and renamed; the manifest is replaced the
same way, after the shard, so a killed writer leaves a valid store ending at its last complete
shard. Shard numbers are rank-aware (``index = sequence * world_size + rank``) so several
ranks can write one store; `merge_rank_manifests` joins their manifests.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from sae_kit.artifacts import read_tagged_json
from sae_kit.errors import SaeKitError

FORMAT = "sae-kit-activation-store"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_EVAL_EVERY = 20
"""Every 20th context (5 %) is held out for evaluation."""
META_KEYS = ("tokens", "context", "position")


# ----------------------------------------------------------------------------- small helpers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename (never a partial file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())


def shard_file_name(sequence: int, rank: int = 0, world_size: int = 1) -> str:
    return f"shard-{sequence * world_size + rank:05d}.safetensors"


def is_eval_context(context: torch.Tensor | int, eval_every: int) -> torch.Tensor | bool:
    """Held-out split: contexts whose index is a multiple of `eval_every`."""
    return context % eval_every == 0


# ----------------------------------------------------------------------------- writing


class StoreWriter:
    """Appends shards to a store directory and keeps its manifest current.

    Usage: ``writer = StoreWriter.create(...)`` or ``StoreWriter.resume(path)``, then
    ``writer.write_shard(tensors)`` per shard and ``writer.finish()``.
    """

    def __init__(self, path: Path, manifest: dict, rank: int = 0, world_size: int = 1):
        self.path = Path(path)
        self.manifest = manifest
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def create(cls, path: Path, manifest: dict, rank: int = 0, world_size: int = 1) -> "StoreWriter":
        """Start a new store with `manifest` (hooks, model, corpus …); shards list starts empty."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "eval_every": DEFAULT_EVAL_EVERY,
            **manifest,
            "shards": [],
            "n_tokens": 0,
            "n_contexts": 0,
            "complete": False,
        }
        writer = cls(path, manifest, rank, world_size)
        writer._save_manifest()
        return writer

    @classmethod
    def resume(cls, path: Path, rank: int = 0, world_size: int = 1) -> "StoreWriter":
        """Reopen an interrupted store: drop temporary files and shards the manifest does not list."""
        path = Path(path)
        manifest = read_manifest(path)
        listed = {shard["file"] for shard in manifest["shards"]}
        for leftover in path.glob(".*.tmp"):
            leftover.unlink()
        for stray in path.glob("shard-*.safetensors"):
            if stray.name not in listed:  # written but killed before the manifest named it
                stray.unlink()
        return cls(path, manifest, rank, world_size)

    @property
    def n_contexts(self) -> int:
        return self.manifest["n_contexts"]

    def write_shard(self, tensors: dict[str, torch.Tensor]) -> dict:
        """Write one shard (hook activations [n, d] + tokens/context/position [n]) atomically."""
        n = int(tensors["tokens"].shape[0])
        contexts = tensors["context"]
        sequence = len(self.manifest["shards"])
        name = shard_file_name(sequence, self.rank, self.world_size)
        data = save_safetensors_bytes({k: v.contiguous() for k, v in tensors.items()})
        atomic_write_bytes(self.path / name, data)
        entry = {
            "file": name,
            "rank": self.rank,
            "n_tokens": n,
            "first_context": int(contexts[0]),
            "n_contexts": int(contexts[-1] - contexts[0] + 1),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self.manifest["shards"].append(entry)
        self.manifest["n_tokens"] += n
        self.manifest["n_contexts"] += entry["n_contexts"]
        self._save_manifest()  # after the rename: the manifest only ever names complete shards
        return entry

    def finish(self, **extra) -> None:
        self.manifest.update(extra)
        self.manifest["complete"] = True
        self._save_manifest()

    def _save_manifest(self) -> None:
        name = MANIFEST if self.world_size == 1 else f"manifest.rank-{self.rank}.json"
        atomic_write_json(self.path / name, self.manifest)


def merge_rank_manifests(path: Path) -> dict:
    """Join `manifest.rank-R.json` files written by several ranks into `manifest.json`.

    Shards are ordered by their first context; totals are summed.
    """
    path = Path(path)
    parts = [json.loads(p.read_text()) for p in sorted(path.glob("manifest.rank-*.json"))]
    if not parts:
        raise SaeKitError(f"{path} has no manifest.rank-*.json files to merge")
    merged = dict(parts[0])
    merged["shards"] = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["first_context"])
    merged["n_tokens"] = sum(p["n_tokens"] for p in parts)
    merged["n_contexts"] = sum(p["n_contexts"] for p in parts)
    merged["complete"] = all(p["complete"] for p in parts)
    atomic_write_json(path / MANIFEST, merged)
    return merged


def read_manifest(path: Path) -> dict:
    return read_tagged_json(path, MANIFEST, FORMAT, "an activation store", "`sae-kit harvest`")


# ----------------------------------------------------------------------------- reading


@dataclass
class Chunk:
    """A run of consecutive stored tokens (one shard, optionally filtered to a split)."""

    acts: torch.Tensor
    """[n, d] activations at the hook."""
    tokens: torch.Tensor
    """[n] token ids."""
    context: torch.Tensor
    """[n] context index of each token."""
    position: torch.Tensor
    """[n] position of each token in its context (0 is BOS)."""
    index: torch.Tensor
    """[n] global token index of each row (row in the concatenation of all shards)."""
    start: int
    """Global token index of the shard's first row."""


class ActivationStore:
    """Read-only view of a store directory. Shards are checked against their sha256 on first read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.shards: list[dict] = self.manifest["shards"]
        self.eval_every: int = self.manifest.get("eval_every", DEFAULT_EVAL_EVERY)
        self.hooks: dict[str, dict] = {h["name"]: h for h in self.manifest["hooks"]}
        self.hook_names: list[str] = list(self.hooks)
        self.context_len: int = self.manifest["context_len"]
        self.shard_starts = np.cumsum([0] + [s["n_tokens"] for s in self.shards])
        self.context_starts = np.array([s["first_context"] for s in self.shards], dtype=np.int64)
        self._verified: set[int] = set()
        self._meta_cache: dict[int, dict[str, torch.Tensor]] = {}
        if not self.shards:
            raise SaeKitError(f"{self.path} holds no complete shard yet")

    # -- facts ------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def n_contexts(self) -> int:
        return int(self.manifest["n_contexts"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def d_in(self, hook: str) -> int:
        return int(self._hook(hook)["d"])

    def split_of_context(self, i: int) -> str:
        return "eval" if is_eval_context(i, self.eval_every) else "train"

    def count(self, split: str = "train", skip_bos: bool = True) -> int:
        """Number of tokens in `split` ('train', 'eval' or 'all')."""
        return sum(int(self._row_mask(s, split, skip_bos).sum()) for s in range(len(self.shards)))

    def __repr__(self) -> str:
        hooks = ", ".join(f"{n} (d={h['d']})" for n, h in self.hooks.items())
        return f"ActivationStore({str(self.path)!r}, {self.n_tokens} tokens, {len(self.shards)} shards, hooks: {hooks})"

    # -- shard access -----------------------------------------------------------------------

    def load_shard(self, s: int) -> dict[str, torch.Tensor]:
        """All tensors of shard `s`, checked for size and (first time) sha256."""
        entry = self.shards[s]
        file = self.path / entry["file"]
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise SaeKitError(f"shard {entry['file']} is missing from {self.path}; re-harvest or restore it") from None
        if "bytes" in entry and len(data) != entry["bytes"]:
            raise SaeKitError(
                f"shard {entry['file']} is truncated or altered ({len(data)} bytes, manifest says {entry['bytes']}); "
                "re-harvest it (sae-kit harvest --resume after deleting it)"
            )
        if s not in self._verified:
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise SaeKitError(f"shard {entry['file']} fails its sha256 checksum; the file is corrupt: re-harvest it")
            self._verified.add(s)
        try:
            return load_safetensors_bytes(data)
        except Exception as err:
            raise SaeKitError(f"shard {entry['file']} cannot be read as safetensors ({err})") from err

    def _meta(self, s: int) -> dict[str, torch.Tensor]:
        """tokens/context/position of shard `s` (small; cached; read without the activations)."""
        if s not in self._meta_cache:
            from safetensors import safe_open

            file = self.path / self.shards[s]["file"]
            try:
                with safe_open(str(file), framework="pt") as handle:
                    self._meta_cache[s] = {k: handle.get_tensor(k) for k in META_KEYS}
            except Exception as err:
                raise SaeKitError(f"shard {self.shards[s]['file']} cannot be read ({err}); run `sae-kit verify`") from err
        return self._meta_cache[s]

    def _row_mask(self, s: int, split: str, skip_bos: bool) -> torch.Tensor:
        meta = self._meta(s)
        mask = torch.ones(meta["tokens"].shape[0], dtype=torch.bool)
        if skip_bos and self.manifest.get("prepend_bos", True):
            mask &= meta["position"] != 0
        if split == "train":
            mask &= ~is_eval_context(meta["context"], self.eval_every)
        elif split == "eval":
            mask &= is_eval_context(meta["context"], self.eval_every)
        elif split != "all":
            raise SaeKitError(f"unknown split {split!r}; use 'train', 'eval' or 'all'")
        return mask

    def _hook(self, hook: str) -> dict:
        if hook not in self.hooks:
            raise SaeKitError(f"the store has no hook {hook!r}; it holds: {', '.join(self.hook_names)}")
        return self.hooks[hook]

    def resolve_hook_name(self, hook: str | None) -> str:
        """A stored hook name for `hook` (its module name or the alias it was harvested as)."""
        if hook is None:
            if len(self.hook_names) == 1:
                return self.hook_names[0]
            raise SaeKitError(f"the store holds several hooks; pick one with --hook: {', '.join(self.hook_names)}")
        for name, info in self.hooks.items():
            if hook in (name, info.get("requested")):
                return name
        return self._hook(hook)["name"]

    # -- sequential and random access ---------------------------------------------------------

    def iter_chunks(self, hook: str, split: str = "all", skip_bos: bool = False, dtype=torch.float32) -> Iterator[Chunk]:
        """Shards in store order, as float `dtype` activations plus metadata, filtered to `split`."""
        self._hook(hook)
        for s in range(len(self.shards)):
            tensors = self.load_shard(s)
            start = int(self.shard_starts[s])
            rows = torch.arange(tensors["tokens"].shape[0])
            if split != "all" or skip_bos:
                rows = rows[self._row_mask(s, split, skip_bos)]
                pick = lambda t: t[rows]  # noqa: E731
            else:
                pick = lambda t: t  # noqa: E731
            yield Chunk(
                acts=pick(tensors[hook]).to(dtype),
                tokens=pick(tensors["tokens"]).long(),
                context=pick(tensors["context"]).long(),
                position=pick(tensors["position"]).long(),
                index=rows + start,
                start=start,
            )

    def _locate(self, index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_tokens):
            raise SaeKitError(f"token index out of range: the store holds {self.n_tokens} tokens")
        shard = np.searchsorted(self.shard_starts, index, side="right") - 1
        return shard, index - self.shard_starts[shard]

    def gather(self, hook: str | None, index) -> dict[str, torch.Tensor]:
        """Rows at global token indices `index` [m]: activations [m, d] (if `hook`) + metadata [m]."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        shard, row = self._locate(index.numpy())
        out = {k: torch.empty(len(index), dtype=torch.long) for k in META_KEYS}
        if hook is not None:
            out["acts"] = torch.empty(len(index), self.d_in(hook), dtype=torch.float32)
        for s in np.unique(shard):
            where = torch.from_numpy(np.nonzero(shard == s)[0])
            rows = torch.from_numpy(row[shard == s])
            meta = self._meta(int(s))
            for key in META_KEYS:
                out[key][where] = meta[key][rows].long()
            if hook is not None:
                out["acts"][where] = self.load_shard(int(s))[hook][rows].float()
        return out

    def context(self, i: int, hooks: list[str] | None = None) -> dict:
        """Context `i`: tokens [C] and activations {hook: [C, d]} and the global index of its BOS."""
        if not 0 <= i < self.n_contexts:
            raise SaeKitError(f"context {i} out of range: the store holds {self.n_contexts} contexts")
        s = int(np.searchsorted(self.context_starts, i, side="right") - 1)
        meta = self._meta(s)
        rows = torch.nonzero(meta["context"] == i).flatten()
        tensors = self.load_shard(s)
        return {
            "tokens": meta["tokens"][rows].long(),
            "activations": {h: tensors[h][rows].float() for h in (hooks or self.hook_names)},
            "start": int(self.shard_starts[s] + rows[0]),
        }

    # -- shuffled training batches ------------------------------------------------------------

    def batches(
        self,
        hook: str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        split: str = "train",
        skip_bos: bool = True,
        epochs: int | None = 1,
        skip_batches: int = 0,
        shuffle_buffer_shards: int = 4,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        drop_last: bool = True,
        prefetch: int = 2,
    ) -> Iterator[torch.Tensor]:
        """Batches [batch_size, d] of activations, deterministic given `seed`.

        Shuffling: each epoch visits shards in a seeded random order, `shuffle_buffer_shards`
        at a time; the rows of those shards (plus the few left over from the previous group)
        are permuted and cut into batches. Memory is bounded by the buffer, not the store.
        `skip_batches=n` starts exactly where batch n would start: row indices are computed
        for the skipped batches but their activations are never loaded. A background thread
        keeps `prefetch` batches ready so the consumer never waits on disk.
        """
        self._hook(hook)
        plan = self._batch_plan(batch_size, shuffle, seed, split, skip_bos, epochs, shuffle_buffer_shards, drop_last)
        gen = self._gather_batches(hook, plan, skip_batches, device, dtype)
        return _prefetched(gen, prefetch) if prefetch > 0 else gen

    def _batch_plan(self, batch_size, shuffle, seed, split, skip_bos, epochs, buffer_shards, drop_last):
        """Yield (shards to load, list of batches as [(shard, local rows)]) per buffer group."""
        generator = torch.Generator().manual_seed(seed)
        selected = [torch.nonzero(self._row_mask(s, split, skip_bos)).flatten() for s in range(len(self.shards))]
        if sum(len(rows) for rows in selected) < batch_size and drop_last:
            raise SaeKitError(
                f"the {split} split holds {sum(len(r) for r in selected)} tokens, fewer than one batch of {batch_size}"
            )
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(len(self.shards), generator=generator).tolist() if shuffle else list(range(len(self.shards)))
            carry_shard = torch.empty(0, dtype=torch.long)
            carry_row = torch.empty(0, dtype=torch.long)
            for g in range(0, len(order), buffer_shards):
                group = order[g : g + buffer_shards]
                shard_ids = torch.cat([carry_shard] + [torch.full((len(selected[s]),), s) for s in group])
                rows = torch.cat([carry_row] + [selected[s] for s in group])
                if shuffle:
                    perm = torch.randperm(len(rows), generator=generator)
                    shard_ids, rows = shard_ids[perm], rows[perm]
                n_full = len(rows) // batch_size
                cut = n_full * batch_size
                batches = [(shard_ids[i : i + batch_size], rows[i : i + batch_size]) for i in range(0, cut, batch_size)]
                carry_shard, carry_row = shard_ids[cut:], rows[cut:]
                last_group = g + buffer_shards >= len(order)
                if last_group and len(carry_row) and not drop_last:
                    batches.append((carry_shard, carry_row))
                yield batches
            epoch += 1

    def _gather_batches(self, hook, plan, skip_batches, device, dtype) -> Iterator[torch.Tensor]:
        loaded: dict[int, torch.Tensor] = {}
        seen = 0
        for batches in plan:
            if seen + len(batches) <= skip_batches:
                seen += len(batches)
                continue
            needed = sorted({int(s) for shard_ids, _ in batches for s in shard_ids.unique()})
            for s in list(loaded):
                if s not in needed:
                    del loaded[s]  # keep memory bounded by the shuffle buffer
            for s in needed:
                if s not in loaded:
                    loaded[s] = self.load_shard(s)[hook]
            for shard_ids, rows in batches:
                seen += 1
                if seen <= skip_batches:
                    continue
                out = torch.empty(len(rows), self.d_in(hook), dtype=dtype)
                for s in shard_ids.unique().tolist():
                    where = shard_ids == s
                    out[where] = loaded[s][rows[where]].to(dtype)
                if device is not None and str(device) != "cpu":
                    out = out.pin_memory().to(device, non_blocking=True)
                yield out

    # -- integrity ----------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Re-hash every shard against the manifest; return one message per bad shard."""
        problems = []
        for entry in self.shards:
            file = self.path / entry["file"]
            if not file.is_file():
                problems.append(f"{entry['file']}: missing")
                continue
            digest = hashlib.sha256()
            size = 0
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
                    size += len(block)
            if "bytes" in entry and size != entry["bytes"]:
                problems.append(f"{entry['file']}: {size} bytes, manifest says {entry['bytes']} (truncated or altered)")
            elif digest.hexdigest() != entry["sha256"]:
                problems.append(f"{entry['file']}: sha256 mismatch (corrupt)")
        return problems


def _prefetched(generator: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
    """Run `generator` in a background thread, keeping up to `depth` items ready."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        """Queue `item` unless the consumer has gone away (then give up quietly)."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in generator:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # hand the error to the consumer
            put(err)

    thread = threading.Thread(target=produce, daemon=True, name="sae-kit-store-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Stop the producer and wait for it: a daemon thread still inside torch when the
        # interpreter exits aborts the process ("terminate called without an active exception").
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
