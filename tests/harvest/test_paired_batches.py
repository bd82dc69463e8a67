"""Paired batches for transcoders: mlp_in.1 and mlp.1 harvested in one pass, gathered by one
shuffled plan, row-aligned (checked by running the real MLP on the input rows), resumable
exactly, and the same rows as each hook read alone."""

from __future__ import annotations

import itertools

import pytest
import torch

from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore
from sae_kit.lm.models import load_model

IN, OUT = "model.layers.1.mlp:input", "model.layers.1.mlp"


@pytest.fixture(scope="module")
def store(tiny_mlp_store):
    return ActivationStore(tiny_mlp_store)


def test_both_points_are_stored_under_their_module_names(store):
    assert store.hook_names == [IN, OUT]
    assert [store.hooks[h]["requested"] for h in store.hook_names] == ["mlp_in.1", "mlp.1"]
    assert store.resolve_hook_name("mlp_in.1") == IN and store.resolve_hook_name("mlp.1") == OUT


def test_pairs_are_the_same_token_the_mlp_of_the_input_is_the_target(store, tiny_llama_dir):
    """Row i of y is the MLP applied to row i of x, for shuffled batches across shard groups."""
    mlp = dict(load_model(str(tiny_llama_dir), device="cpu").model.named_modules())[OUT]
    batches = store.batches((IN, OUT), 96, seed=3, shuffle_buffer_shards=2, prefetch=0)
    n = 0
    for x, y in batches:
        assert x.shape == y.shape == (96, 32)
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), y, rtol=1e-5, atol=1e-6)
        n += 1
    assert n == store.count("train") // 96


def test_pairs_equal_each_hook_read_alone_and_resume_exactly(store):
    settings = dict(seed=5, epochs=None, shuffle_buffer_shards=2)
    pairs = list(itertools.islice(store.batches((IN, OUT), 64, **settings), 12))
    alone_x = list(itertools.islice(store.batches(IN, 64, **settings), 12))
    alone_y = list(itertools.islice(store.batches(OUT, 64, **settings), 12))
    for (x, y), xa, ya in zip(pairs, alone_x, alone_y):
        assert torch.equal(x, xa) and torch.equal(y, ya)
    resumed = list(itertools.islice(store.batches((IN, OUT), 64, skip_batches=7, **settings), 5))
    for (x, y), (x0, y0) in zip(resumed, pairs[7:]):
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_the_gatherer_keeps_only_the_hooks_asked_for(store, monkeypatch):
    """Memory stays bounded by the shuffle buffer: a loaded shard keeps the requested hooks only."""
    from sae_kit.harvest import batches as batches_module

    kept = []
    original = batches_module._gather_rows

    def spy(loaded, hook, *args):
        kept.append(sorted(len(v) for v in loaded.values()))
        assert all(set(v) == {IN, OUT} for v in loaded.values())
        assert len(loaded) <= 4  # a buffer group of two shards, plus the shards its carried-over rows came from
        return original(loaded, hook, *args)

    monkeypatch.setattr(batches_module, "_gather_rows", spy)
    assert sum(1 for _ in store.batches((IN, OUT), 128, shuffle_buffer_shards=2, prefetch=0)) > 0
    assert kept


def test_an_unknown_hook_in_a_pair_is_refused(store):
    with pytest.raises(SaeKitError, match="no hook 'model.layers.2.mlp'"):
        store.batches((IN, "model.layers.2.mlp"), 8)
