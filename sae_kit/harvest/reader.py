"""Reading an activation store: `ActivationStore`, a read-only, checksum-verified view of its directory.

Sequential access (`iter_chunks`, whole shards in store order), random access (`gather`,
`context`), shuffled training batches (`batches`, planned and prefetched in
`sae_kit.harvest.batches`) and integrity (`verify`). The files are described in
`sae_kit.harvest.store`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes

from sae_kit.errors import SaeKitError
from sae_kit.harvest.batches import batch_plan, gather_batches, prefetched
from sae_kit.harvest.store import DEFAULT_EVAL_EVERY, META_KEYS, is_eval_context, read_manifest


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

    def storage_dtype(self, hook: str) -> torch.dtype:
        """The dtype the hook's activations are stored in (manifest; float32 for stores that do not say)."""
        return getattr(torch, self._hook(hook).get("dtype", "float32"))

    def batch_dtype(self, hooks: str | tuple[str, ...], compute_dtype: str) -> torch.dtype:
        """The dtype training batches are gathered in: bfloat16 when training computes in bfloat16 and
        every hook is stored in bfloat16 (no float32 round trip: half the bytes gathered and copied
        to the device; autocast would round the float32 copy back to bfloat16 anyway), else float32."""
        names = (hooks,) if isinstance(hooks, str) else hooks
        stored = {self.storage_dtype(h) for h in names}
        return torch.bfloat16 if compute_dtype == "bfloat16" and stored == {torch.bfloat16} else torch.float32

    def count(self, split: str = "train", skip_bos: bool = True) -> int:
        """Number of tokens in `split` ('train', 'eval' or 'all')."""
        return sum(int(self.row_mask(s, split, skip_bos).sum()) for s in range(len(self.shards)))

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
            file = self.path / self.shards[s]["file"]
            try:
                with safe_open(str(file), framework="pt") as handle:
                    self._meta_cache[s] = {k: handle.get_tensor(k) for k in META_KEYS}
            except Exception as err:
                raise SaeKitError(f"shard {self.shards[s]['file']} cannot be read ({err}); run `sae-kit verify`") from err
        return self._meta_cache[s]

    def row_mask(self, s: int, split: str, skip_bos: bool) -> torch.Tensor:
        """[n] bool: the rows of shard `s` in `split` ("train", "eval" or "all"), BOS rows dropped if `skip_bos`."""
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
                rows = rows[self.row_mask(s, split, skip_bos)]
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
        hook: str | tuple[str, ...],
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
        part: tuple[int, int] | None = None,
    ) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, ...]]:
        """Batches [batch_size, d] of activations, deterministic given `seed`.

        `hook` may be a tuple of hooks: each batch is then a tuple with one tensor [batch_size, d_h]
        per hook, the rows of all of them the same tokens (the same plan gathers every hook;
        a transcoder's input x and target y, e.g. ``("model.layers.3.mlp:input", "model.layers.3.mlp")``).

        Shuffling: each epoch visits shards in a seeded random order, `shuffle_buffer_shards`
        at a time; the rows of those shards (plus the few left over from the previous group)
        are permuted and cut into batches. Memory is bounded by the buffer, not the store.
        `skip_batches=n` starts exactly where batch n would start: row indices are computed
        for the skipped batches but their activations are never loaded. A background thread
        keeps `prefetch` batches ready so the consumer never waits on disk. `part=(r, n)` yields
        only rows [r·b/n, (r+1)·b/n) of each batch (rank r's slice under data parallelism: the
        n ranks' slices make up exactly the one-process batch).
        """
        for name in (hook,) if isinstance(hook, str) else hook:
            self._hook(name)
        plan = batch_plan(self, batch_size, shuffle, seed, split, skip_bos, epochs, shuffle_buffer_shards, drop_last)
        gen = gather_batches(self, hook, plan, skip_batches, device, dtype, part)
        return prefetched(gen, prefetch) if prefetch > 0 else gen

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
