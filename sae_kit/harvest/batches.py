"""Shuffled training batches from an activation store: a seeded plan of rows, gathered shard by shard
and prefetched on a background thread.

The plan decides, for every batch, which (shard, row) pairs it holds, without reading any
activation; the gatherer loads only the shards the current buffer group needs, so memory is
bounded by the shuffle buffer, and batches skipped on resume are never loaded. One plan can
gather several hooks at once (a transcoder's input and target): their rows are the same
(context, position) pairs, in the same order, because every hook of a shard comes from the same
forward pass.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from sae_kit.errors import SaeKitError


def batch_plan(store, batch_size, shuffle, seed, split, skip_bos, epochs, buffer_shards, drop_last):
    """Yield, per buffer group of `buffer_shards` shards, its batches as [(shard ids [b], local rows [b])].

    Each epoch visits the shards in a seeded random order; a group's rows (plus the few left over
    from the previous group) are permuted and cut into batches (`ActivationStore.batches`)."""
    generator = torch.Generator().manual_seed(seed)
    selected = [torch.nonzero(store.row_mask(s, split, skip_bos)).flatten() for s in range(len(store.shards))]
    if sum(len(rows) for rows in selected) < batch_size and drop_last:
        raise SaeKitError(
            f"the {split} split holds {sum(len(r) for r in selected)} tokens, fewer than one batch of {batch_size}"
        )
    epoch = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(len(store.shards), generator=generator).tolist() if shuffle else list(range(len(store.shards)))
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


def gather_batches(store, hook, plan, skip_batches, device, dtype,
                   part=None) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """The planned batches [batch_size, d] as tensors: each buffer group's shards loaded once (its
    first `skip_batches` batches skipped without loading), moved to `device` (pinned on CUDA).

    `hook` is one stored hook name (yields tensors) or a tuple of them (yields a tuple of
    tensors per batch, one per hook, row i of each being the same token).
    `part=(r, n)`: only rows [r·b/n, (r+1)·b/n) of each batch (one data-parallel rank's share)."""
    hooks = (hook,) if isinstance(hook, str) else tuple(hook)
    loaded: dict[int, dict[str, torch.Tensor]] = {}
    seen = 0
    for batches in plan:
        if part is not None:
            r, n = part
            batches = [(s[len(s) * r // n : len(s) * (r + 1) // n], w[len(w) * r // n : len(w) * (r + 1) // n])
                       for s, w in batches]
        if seen + len(batches) <= skip_batches:
            seen += len(batches)
            continue
        needed = sorted({int(s) for shard_ids, _ in batches for s in shard_ids.unique()})
        for s in list(loaded):
            if s not in needed:
                del loaded[s]  # keep memory bounded by the shuffle buffer
        for s in needed:
            if s not in loaded:
                tensors = store.load_shard(s)
                loaded[s] = {h: tensors[h] for h in hooks}  # only the hooks asked for stay in memory
        for shard_ids, rows in batches:
            seen += 1
            if seen <= skip_batches:
                continue
            outs = tuple(_gather_rows(loaded, h, shard_ids, rows, store.d_in(h), dtype, device) for h in hooks)
            yield outs[0] if isinstance(hook, str) else outs


def _gather_rows(loaded: dict, hook: str, shard_ids: torch.Tensor, rows: torch.Tensor, d: int, dtype,
                 device) -> torch.Tensor:
    """One hook's activations [len(rows), d] of a planned batch, on `device`.

    Gathers with index_select / index_copy_ (on CPU several times faster than boolean-mask
    indexing, which goes through the generic advanced-indexing kernel). For CUDA the batch is
    gathered straight into pinned host memory and copied by `_to_device`."""
    cuda = device is not None and torch.device(device).type == "cuda"
    out = torch.empty(len(rows), d, dtype=dtype, pin_memory=cuda)
    for s in shard_ids.unique().tolist():
        where = torch.nonzero(shard_ids == s).squeeze(1)
        out.index_copy_(0, where, loaded[s][hook].index_select(0, rows.index_select(0, where)).to(dtype))
    if cuda:
        return _to_device(out, torch.device(device))
    if device is not None and str(device) != "cpu":
        out = out.to(device)
    return out


_COPY_STREAMS: dict = {}


def _to_device(pinned: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a pinned host batch to the GPU on a side stream (this runs in the prefetch thread, so
    the copy overlaps the training step on the default stream), wait for that copy here, and
    mark the result as used by the default stream (so the caching allocator does not hand its
    memory to the side stream while training still reads it). With the prefetch depth of 2
    this is the double buffer: one batch in training, the next already on the device."""
    stream = _COPY_STREAMS.get(device)
    if stream is None:
        stream = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        out = pinned.to(device, non_blocking=True)
    stream.synchronize()
    out.record_stream(torch.cuda.default_stream(device))
    return out


def prefetched(generator: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
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
