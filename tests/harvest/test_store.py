"""The activation store: on-disk layout, reader API, shuffling, integrity errors."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore, StoreWriter, merge_rank_manifests
from sae_kit.harvest.store import is_eval_context


def test_layout_matches_design(tiny_store):
    manifest = json.loads((tiny_store / "manifest.json").read_text())
    assert manifest["format"] == "sae-kit-activation-store" and manifest["complete"]
    assert manifest["context_len"] == 32 and manifest["prepend_bos"]
    assert [h["requested"] for h in manifest["hooks"]] == ["resid.1", "mlp.1"]
    assert manifest["n_tokens"] == sum(s["n_tokens"] for s in manifest["shards"]) == 8192
    assert {"spec", "config_sha256", "dtype"} <= set(manifest["model"])
    first = manifest["shards"][0]
    with safe_open(str(tiny_store / first["file"]), framework="pt") as handle:
        keys = set(handle.keys())
        assert keys == {h["name"] for h in manifest["hooks"]} | {"tokens", "context", "position"}
        acts = handle.get_tensor(manifest["hooks"][0]["name"])
        assert acts.shape == (first["n_tokens"], 32)
        assert handle.get_tensor("position")[:33].tolist() == list(range(32)) + [0]


def test_context_and_gather_agree(tiny_store):
    store = ActivationStore(tiny_store)
    hook = store.hook_names[0]
    ctx = store.context(70)
    assert ctx["tokens"].shape == (32,) and ctx["tokens"][0] == store.manifest["tokenizer"]["bos_token_id"]
    rows = store.gather(hook, torch.arange(ctx["start"], ctx["start"] + 32))
    torch.testing.assert_close(rows["acts"], ctx["activations"][hook])
    assert rows["context"].unique().tolist() == [70] and rows["position"].tolist() == list(range(32))
    with pytest.raises(SaeKitError, match="out of range"):
        store.context(store.n_contexts)


def test_batches_cover_train_split_once(tiny_store):
    store = ActivationStore(tiny_store)
    hook = store.hook_names[0]
    n_train = store.count("train")
    n_eval = store.count("eval")
    assert n_train + n_eval == store.n_tokens - store.n_contexts  # BOS skipped
    assert n_eval == sum(1 for i in range(store.n_contexts) if i % store.eval_every == 0) * 31
    everything = torch.cat(list(store.batches(hook, 100, seed=1, drop_last=False, shuffle_buffer_shards=2)))
    expected = torch.cat([c.acts for c in store.iter_chunks(hook, split="train", skip_bos=True)])
    assert everything.shape == expected.shape
    # same multiset of rows: compare sorted row sums (rows are distinct random activations)
    torch.testing.assert_close(everything.sum(1).sort().values, expected.sum(1).sort().values)
    assert not torch.equal(everything[:100], expected[:100])  # actually shuffled


def test_batches_deterministic_and_resumable(tiny_store):
    store = ActivationStore(tiny_store)
    hook = store.hook_names[0]
    full = list(store.batches(hook, 64, seed=3, epochs=2))
    again = list(store.batches(hook, 64, seed=3, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(full, again)) and len(full) == len(again)
    for skip in (1, 37, len(full) // 2 + 5):
        resumed = list(store.batches(hook, 64, seed=3, epochs=2, skip_batches=skip))
        assert len(resumed) == len(full) - skip
        assert all(torch.equal(a, b) for a, b in zip(full[skip:], resumed))
    other = next(iter(store.batches(hook, 64, seed=4)))
    assert not torch.equal(other, full[0])


def test_eval_split_is_held_out(tiny_store):
    store = ActivationStore(tiny_store)
    hook = store.hook_names[0]
    eval_rows = torch.cat([c.context for c in store.iter_chunks(hook, split="eval")])
    assert (eval_rows % store.eval_every == 0).all()
    assert is_eval_context(0, store.eval_every) and not is_eval_context(1, store.eval_every)


def test_corrupt_and_truncated_shards_are_named(tiny_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    shard = sorted(copy.glob("shard-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore(copy)
    assert store.verify() == [f"{shard.name}: sha256 mismatch (corrupt)"]
    with pytest.raises(SaeKitError, match=f"shard {shard.name} fails its sha256"):
        list(store.iter_chunks(store.hook_names[0]))
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(SaeKitError, match=f"shard {shard.name} is truncated"):
        ActivationStore(copy).load_shard(1)


def test_unknown_hook_lists_stored_hooks(tiny_store):
    store = ActivationStore(tiny_store)
    with pytest.raises(SaeKitError, match="has no hook 'resid.5'; it holds: model.layers.1, model.layers.1.mlp"):
        store.batches("resid.5", 8)
    assert store.resolve_hook_name("resid.1") == "model.layers.1"


def test_rank_aware_writers_merge(tmp_path):
    base = {"hooks": [{"name": "h", "d": 2, "dtype": "float32"}], "context_len": 2}
    for rank in range(2):
        writer = StoreWriter.create(tmp_path, base, rank=rank, world_size=2)
        ctx = torch.tensor([rank, rank], dtype=torch.int32)
        writer.write_shard({"h": torch.full((2, 2), float(rank)), "tokens": torch.zeros(2, dtype=torch.int32),
                            "context": ctx, "position": torch.arange(2, dtype=torch.int32)})
        writer.finish()
    merged = merge_rank_manifests(tmp_path)
    assert [s["file"] for s in merged["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    store = ActivationStore(tmp_path)
    assert store.n_tokens == 4 and store.context(1)["activations"]["h"].eq(1).all()


def test_a_resuming_rank_cleans_up_only_its_own_files(tmp_path):
    base = {"hooks": [{"name": "h", "d": 2, "dtype": "float32"}], "context_len": 2}
    writers = [StoreWriter.create(tmp_path, base, rank=rank, world_size=2) for rank in range(2)]
    for rank, writer in enumerate(writers):
        writer.write_shard({"h": torch.zeros(2, 2), "tokens": torch.zeros(2, dtype=torch.int32),
                            "context": torch.tensor([rank, rank], dtype=torch.int32),
                            "position": torch.arange(2, dtype=torch.int32)})
    strays = ["shard-00002.safetensors", "shard-00003.safetensors", ".shard-00005.safetensors.tmp"]
    for name in strays:  # written by a killed rank before its manifest named them
        (tmp_path / name).write_bytes(b"partial")
    resumed = StoreWriter.resume(tmp_path, rank=0, world_size=2)
    assert [s["file"] for s in resumed.manifest["shards"]] == ["shard-00000.safetensors"]
    assert not (tmp_path / "shard-00002.safetensors").exists()  # rank 0's own stray is gone
    assert (tmp_path / "shard-00003.safetensors").exists() and (tmp_path / ".shard-00005.safetensors.tmp").exists()
    merged = merge_rank_manifests(tmp_path, remove_parts=False)
    assert not merged["complete"] and (tmp_path / "manifest.rank-1.json").exists()
