"""Training on the fly: activations straight from the language model, through a shuffling buffer.

    corpus ─pack─▶ contexts ─▶ this rank's LM batches (held-out contexts left out)
           ─▶ one forward pass to the last hook ─▶ MixingBuffer ─▶ batches {hook: [b, d]} ─▶ training.loop.fit

The buffer is SAELens' mixing buffer: add LM batches until it holds at least C = buffer_batches
× b rows, shuffle, serve half of it as batches, keep the rest, refill. Consecutive batches then
mix tokens of many documents, and memory stays bounded (C + one LM batch rows per hook).

Exact resume: at any step the state is (the LM batch where the current fill began, the rows
kept from the previous round, the buffer RNG's state before this round's permutation, the
batches of this round already served). Resuming refills from that corpus position, draws the
same permutation and skips the served batches: the same batches follow, bit for bit (the forward
passes see the same contexts in the same LM batches).

Several processes (torchrun): LM batch g belongs to rank g mod N, so each rank harvests a disjoint
slice of the corpus and fills its own buffer with b = batch_size / N rows per batch (its slice of
the global batch). Held-out contexts (index ≡ 0 mod 20, as in a store) never reach the buffer;
the first `eval_contexts` of them are harvested once into a small store, RUN/eval-store, which
`sae-kit evaluate --run RUN` reads like any other.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from sae_kit.autoencoders import RunInfo
from sae_kit.errors import SaeKitError
from sae_kit.harvest.harvester import HarvestConfig, capture_batches, hook_dims, planned_manifest, shard_tensors
from sae_kit.harvest.store import DEFAULT_EVAL_EVERY, MANIFEST, StoreWriter, read_manifest
from sae_kit.lm.corpus import CorpusSpec, iter_documents, pack_contexts
from sae_kit.lm.hooks import resolve_hooks
from sae_kit.lm.models import LoadedModel, load_model
from sae_kit.training.input_stats import InputStats, estimate_input_stats

EVAL_STORE = "eval-store"


def corpus_of(cfg) -> CorpusSpec:
    """The corpus a TrainConfig names for training on the fly."""
    return CorpusSpec(dataset=cfg.dataset or "python-docs", dataset_config=cfg.dataset_config, split=cfg.dataset_split,
                      text_column=cfg.text_column, streaming=cfg.streaming)


def lm_batches(corpus: CorpusSpec, tokenizer, context_len: int, lm_batch: int, *, rank: int = 0, world: int = 1,
               start: int = 0, eval_every: int = DEFAULT_EVAL_EVERY) -> Iterator[tuple[int, list[list[int]]]]:
    """(g, contexts) for this rank's LM batches g ≥ `start`, endlessly: the packed corpus without its
    held-out contexts (index % eval_every == 0), cut into batches of `lm_batch` contexts; batch g
    belongs to rank g % world. The corpus is read again from the start when it runs out (the
    last, partial batch of each pass is dropped)."""
    g = 0
    for epoch in itertools.count():
        batch, in_epoch = [], 0
        for i, ids in enumerate(pack_contexts(iter_documents(corpus), tokenizer, context_len)):
            if i % eval_every == 0:
                continue
            batch.append(ids)
            if len(batch) == lm_batch:
                if g >= start and g % world == rank:
                    yield g, batch
                g, batch, in_epoch = g + 1, [], in_epoch + 1
        if in_epoch == 0:
            raise SaeKitError(f"the corpus holds fewer than {lm_batch} training contexts of {context_len} tokens; "
                              "use a larger --dataset or a smaller --lm-batch-size / --context-len")
        if epoch == 0 and rank == 0:
            print(f"the corpus ran out after {in_epoch * lm_batch} training contexts; reading it again",
                  file=sys.stderr)


def held_out_contexts(corpus: CorpusSpec, tokenizer, context_len: int, n: int,
                      eval_every: int = DEFAULT_EVAL_EVERY) -> list[list[int]]:
    """Token ids of the first n held-out contexts (index % eval_every == 0) of the packed corpus."""
    contexts = pack_contexts(iter_documents(corpus), tokenizer, context_len)
    return list(itertools.islice(contexts, 0, n * eval_every, eval_every))


class ActivationStream:
    """Shuffled batches {module name: [batch_size, d]} harvested on the fly (module docstring).

    `batches(state)` is the batch source `fit` reads; `state()` the resume state after the
    batches taken so far. Rows are float32 on `device` (the autoencoders'); with the language
    model on the same device they never leave it.
    """

    def __init__(self, loaded: LoadedModel, module_names: list[str], corpus: CorpusSpec, *, context_len: int,
                 lm_batch: int, batch_size: int, buffer_batches: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1, skip_bos: bool = True):
        self.loaded, self.module_names, self.corpus = loaded, module_names, corpus
        self.context_len, self.lm_batch, self.batch_size = context_len, lm_batch, batch_size
        self.capacity = buffer_batches * batch_size
        self.device, self.rank, self.world, self.skip_bos = device, rank, world, skip_bos
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        self.storage: dict[str, torch.Tensor] = {}
        self._fill_start, self._n_kept, self._served, self._rng = 0, 0, 0, self.generator.get_state()

    @property
    def rows_per_lm_batch(self) -> int:
        return self.lm_batch * (self.context_len - int(self.skip_bos))

    def memory_bytes(self, dims: dict[str, int]) -> int:
        """Bytes the buffer holds at most: (C + one LM batch) rows × d × 4 per hook."""
        return (self.capacity + self.rows_per_lm_batch) * sum(dims.values()) * 4

    def rows(self, contexts: list[list[int]]) -> dict[str, torch.Tensor]:
        """One forward pass over `contexts`: {module name: [n·(C − 1), d]} on the buffer's device (BOS dropped)."""
        [(_, acts)] = list(capture_batches(self.loaded, contexts, self.module_names, len(contexts)))
        first = int(self.skip_bos)
        return {name: a[:, first:].reshape(-1, a.shape[-1]).to(self.device, torch.float32) for name, a in acts.items()}

    def state(self) -> dict[str, torch.Tensor]:
        """The resume state after the batches taken so far (tensors only: it goes into a checkpoint)."""
        scalars = torch.tensor([self._fill_start, self._n_kept, self._served], dtype=torch.long)
        kept = {f"kept.{name}": t[: self._n_kept].clone() for name, t in self.storage.items()}
        return {"position": scalars, "rng": self._rng.clone(), **kept}

    def batches(self, state: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {module name: [batch_size, d]}, endlessly; from `state` (see `state`) when resuming."""
        n, skip, start = 0, 0, 0
        if state is not None:
            start, n, skip = (int(v) for v in state["position"])
            self.generator.set_state(state["rng"])
            for name in self.module_names:
                self._ensure(name, state[f"kept.{name}"].shape[-1])
                self.storage[name][:n] = state[f"kept.{name}"].to(self.device)
        source = lm_batches(self.corpus, self.loaded.tokenizer, self.context_len, self.lm_batch, rank=self.rank,
                            world=self.world, start=start)
        while True:
            self._fill_start, self._n_kept = start, n
            while n < self.capacity:  # fill: whole LM batches until the buffer holds C rows
                g, contexts = next(source)
                for name, rows in self.rows(contexts).items():
                    self._ensure(name, rows.shape[-1])
                    self.storage[name][n : n + len(rows)] = rows
                n += self.rows_per_lm_batch
                start = g + 1
            self._rng = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator).to(self.device)
            n_serve = max(1, n // (2 * self.batch_size))
            for j in range(skip, n_serve):
                pick = order[j * self.batch_size : (j + 1) * self.batch_size]
                self._served = j + 1
                yield {name: t.index_select(0, pick) for name, t in self.storage.items()}
            skip, self._served = 0, 0
            keep = order[n_serve * self.batch_size : n]
            for t in self.storage.values():
                t[: len(keep)] = t.index_select(0, keep)
            n = len(keep)

    def _ensure(self, name: str, d: int) -> None:
        if name not in self.storage:
            self.storage[name] = torch.empty(self.capacity + self.rows_per_lm_batch, d, device=self.device)


# ----------------------------------------------------------------------------- the held-out store


def harvest_eval_store(loaded: LoadedModel, module_names: list[str], hooks: tuple[str, ...], corpus: CorpusSpec,
                       out: Path, *, context_len: int, n_contexts: int, lm_batch: int, dims: dict[str, int]) -> Path:
    """Harvest the first `n_contexts` held-out contexts once into a small store at `out`
    (all of it is its eval split), unless a complete one is there already. Returns its path."""
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        same = (old.get("complete") and old.get("corpus") == corpus.to_dict() and old.get("context_len") == context_len
                and old["model"]["config_sha256"] == loaded.identity()["config_sha256"]
                and [h["name"] for h in old["hooks"]] == list(module_names))
        if same and old.get("held_out", {}).get("requested") == n_contexts:
            return out
    for stale in out.glob("*") if out.is_dir() else ():
        stale.unlink()
    contexts = held_out_contexts(corpus, loaded.tokenizer, context_len, n_contexts)
    if not contexts:
        raise SaeKitError("the corpus holds no held-out context (every 20th is held out); use a larger --dataset "
                          "or --eval-contexts 0")
    cfg = HarvestConfig(out=str(out), model=loaded.spec, hooks=hooks, corpus=corpus, tokens=len(contexts) * context_len,
                        context_len=context_len, batch_size=lm_batch)
    manifest = planned_manifest(cfg, loaded, module_names, dims)
    manifest.update(eval_every=1, held_out={"of_corpus_every": DEFAULT_EVAL_EVERY, "n_contexts": len(contexts),
                                            "requested": n_contexts,
                                            "note": "context i here is context 20·i of the packed corpus, never trained on"})
    writer = StoreWriter.create(out, manifest)
    pieces: dict[str, list[torch.Tensor]] = {n: [] for n in module_names}
    for _, acts in capture_batches(loaded, contexts, module_names, lm_batch):
        for name in module_names:
            pieces[name].append(acts[name].reshape(-1, dims[name]).to("cpu", torch.float32))
    writer.write_shard(shard_tensors(contexts, 0, {name: torch.cat(parts) for name, parts in pieces.items()}))
    writer.finish()
    return out


@torch.no_grad()
def stream_samples(stream: ActivationStream, n_rows: int) -> dict[str, torch.Tensor]:
    """The first `n_rows` rows of this rank's LM batches {module name: [n_rows, d]} (not shuffled,
    not consumed from any buffer): what the input scale is estimated on."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in stream.module_names}
    seen = 0
    source = lm_batches(stream.corpus, stream.loaded.tokenizer, stream.context_len, stream.lm_batch,
                        rank=stream.rank, world=stream.world)
    while seen < n_rows:
        _, contexts = next(source)
        for name, rows in stream.rows(contexts).items():
            parts[name].append(rows.cpu())
        seen += stream.rows_per_lm_batch
    return {name: torch.cat(p)[:n_rows] for name, p in parts.items()}


# ----------------------------------------------------------------------------- the source of a training run


class StreamSource:
    """Where an on-the-fly run's batches come from (the counterpart of `training.run.StoreSource`):
    the language model, its hooks, the stream, the held-out store and the input statistics."""

    def __init__(self, cfg, ranks, device: torch.device, out: Path):
        if not cfg.hooks:
            raise SaeKitError("on the fly, name the hook(s) to train on: --hook resid.8 (repeat for several)")
        if cfg.batch_size % ranks.world_size:
            raise SaeKitError(f"--batch-size {cfg.batch_size} does not split evenly over {ranks.world_size} ranks")
        self.cfg, self.ranks, self.device, self.out = cfg, ranks, device, out
        model_device = ranks.device(cfg.model_device or cfg.device)
        self.loaded = load_model(cfg.model or "default", device=model_device, dtype=cfg.model_dtype)
        self.corpus = corpus_of(cfg)
        names = []
        for hook in cfg.hooks:
            resolved = resolve_hooks(self.loaded.model, [hook])
            if len(resolved) != 1:
                raise SaeKitError(f"--hook {hook!r} names {len(resolved)} modules; on the fly give one per --hook")
            names.append(resolved[0])
        dims = hook_dims(self.loaded.model, names)
        self.hooks = [(name, hook, dims[name]) for name, hook in zip(names, cfg.hooks, strict=True)]
        self.n_steps = cfg.tokens // cfg.batch_size
        if self.n_steps < 1:
            raise SaeKitError(f"--tokens {cfg.tokens} makes no full batch of {cfg.batch_size}; raise --tokens")
        self.stream = ActivationStream(self.loaded, names, self.corpus, context_len=cfg.context_len,
                                       lm_batch=cfg.lm_batch_size, batch_size=cfg.batch_size // ranks.world_size,
                                       buffer_batches=cfg.buffer_batches, seed=cfg.seed, device=device,
                                       rank=ranks.rank, world=ranks.world_size)
        self.eval_store = out / EVAL_STORE if cfg.eval_contexts else None
        if self.eval_store is not None:
            if ranks.is_main:
                harvest_eval_store(self.loaded, names, cfg.hooks, self.corpus, self.eval_store,
                                   context_len=cfg.context_len, n_contexts=cfg.eval_contexts,
                                   lm_batch=cfg.lm_batch_size, dims=dims)
            ranks.barrier()
        self.model_identity = self.loaded.identity()

    target = None
    """On the fly the models reconstruct their hooks (transcoders train from a store)."""
    d_out = None

    def describe(self) -> str:
        memory = self.stream.memory_bytes({name: d for name, _, d in self.hooks})
        where = f"{self.loaded.name} on {self.loaded.device}" + (
            f", {self.ranks.world_size} ranks" if self.ranks.enabled else "")
        return (f"on the fly from {where}, corpus {self.corpus.dataset}; shuffle buffer {self.cfg.buffer_batches} "
                f"batches × {self.stream.batch_size} rows = {self.stream.capacity:,} rows per hook, at most "
                f"{memory / 2**20:,.1f} MiB on {self.device}" + (" per rank" if self.ranks.enabled else "")
                + (f"; held-out contexts in {self.eval_store}" if self.eval_store else ""))

    def input_stats(self, state: dict | None) -> dict[str, InputStats]:
        """Per hook: from the checkpoint, or estimated on the first rows of every rank's stream."""
        if state is not None:
            return {m["autoencoder"]["metadata"]["hook_module"]: InputStats(**m["input_stats"]) for m in state["models"]}
        per_rank = math.ceil(self.cfg.norm_estimation_tokens / self.ranks.world_size)
        samples = stream_samples(self.stream, per_rank)
        stats = {}
        for name, x in samples.items():
            everyone = torch.cat(self.ranks.all_gather(x))
            stats[name] = estimate_input_stats([everyone], len(everyone), self.cfg.normalize_inputs,
                                               self.cfg.b_dec_init == "geometric_median")
        return stats

    def run_info(self, key: str, stats: InputStats) -> RunInfo:
        requested = next(hook for name, hook, _ in self.hooks if name == key)
        return RunInfo(store=str(self.eval_store.resolve()) if self.eval_store else None, hook=requested, hook_module=key,
                       model=self.loaded.spec, model_name=self.loaded.name, context_len=self.cfg.context_len,
                       prepend_bos=True, input_scale=stats.scale)

    def provenance(self) -> dict:
        return {"on_the_fly": {"corpus": self.corpus.to_dict(), "buffer_batches": self.cfg.buffer_batches,
                               "world_size": self.ranks.world_size, "eval_store": str(self.eval_store) if self.eval_store else None}}

    def batches_from(self, files: dict | None):
        state = (files or {}).get("source")
        gather = self.cfg.shard_latents and self.ranks.enabled

        def source(skip: int):
            batches = self.stream.batches(state)
            if not gather:
                return batches
            # latents sharded: every rank needs the whole batch, so the ranks' slices are joined
            return ({k: torch.cat(self.ranks.all_gather(v)) for k, v in b.items()} for b in batches)
        return source

    def state(self) -> dict[str, torch.Tensor]:
        return self.stream.state()
