"""The activation store on disk: one directory of safetensors shards and a JSON manifest, and its writer.

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
ranks can write one store; `merge_rank_manifests` joins their manifests. The reader is
`sae_kit.harvest.reader.ActivationStore`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors_bytes

from sae_kit.artifacts import atomic_write_bytes, atomic_write_json, read_tagged_json
from sae_kit.errors import SaeKitError

FORMAT = "sae-kit-activation-store"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_EVAL_EVERY = 20
"""Every 20th context (5 %) is held out for evaluation."""
META_KEYS = ("tokens", "context", "position")


# ----------------------------------------------------------------------------- small helpers


def shard_file_name(sequence: int, rank: int = 0, world_size: int = 1) -> str:
    return f"shard-{sequence * world_size + rank:05d}.safetensors"


def rank_manifest_name(rank: int = 0, world_size: int = 1) -> str:
    """The manifest a writer keeps current: manifest.json alone, manifest.rank-R.json among several."""
    return MANIFEST if world_size == 1 else f"manifest.rank-{rank}.json"


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
        """Reopen an interrupted store: drop this rank's temporary files and the shards of this rank
        that its manifest does not list (other ranks' files are theirs to clean up)."""
        path = Path(path)
        manifest = read_manifest(path, rank_manifest_name(rank, world_size))
        listed = {shard["file"] for shard in manifest["shards"]}

        def mine(name: str) -> bool:
            number = name.split("shard-")[-1].split(".")[0]
            return number.isdigit() and int(number) % world_size == rank

        for leftover in path.glob(".*.tmp"):
            if mine(leftover.name) or leftover.name == f".{rank_manifest_name(rank, world_size)}.tmp":
                leftover.unlink()
        for stray in path.glob("shard-*.safetensors"):
            if stray.name not in listed and mine(stray.name):  # written but killed before the manifest named it
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
        atomic_write_json(self.path / rank_manifest_name(self.rank, self.world_size), self.manifest)


def merge_rank_manifests(path: Path, *, corpus_exhausted: bool | None = None, requested_contexts: int | None = None,
                         remove_parts: bool = True) -> dict:
    """Join `manifest.rank-R.json` files written by several ranks into `manifest.json`.

    Shards are ordered by their first context; totals are summed. When every rank is complete,
    the result is the manifest a one-process harvest writes (its shards in the same order, under
    the same file names) and the rank manifests are removed (`remove_parts`). `corpus_exhausted`
    is recomputed from `requested_contexts` when given (a rank alone cannot tell).
    """
    path = Path(path)
    files = sorted(path.glob("manifest.rank-*.json"))
    parts = [json.loads(p.read_text()) for p in files]
    if not parts:
        raise SaeKitError(f"{path} has no manifest.rank-*.json files to merge")
    merged = {k: v for k, v in parts[0].items() if k != "world_size"}
    merged["shards"] = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["first_context"])
    merged["n_tokens"] = sum(p["n_tokens"] for p in parts)
    merged["n_contexts"] = sum(p["n_contexts"] for p in parts)
    merged["complete"] = all(p["complete"] for p in parts)
    if requested_contexts is not None:
        corpus_exhausted = merged["n_contexts"] < requested_contexts
    if corpus_exhausted is not None:
        merged["corpus_exhausted"] = corpus_exhausted
    atomic_write_json(path / MANIFEST, merged)
    if merged["complete"] and remove_parts:
        for file in files:
            file.unlink()
    return merged


def read_manifest(path: Path, name: str = MANIFEST) -> dict:
    return read_tagged_json(path, name, FORMAT, "an activation store", "`sae-kit harvest`")
