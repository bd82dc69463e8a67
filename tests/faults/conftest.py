"""Fixtures of the fault suite: a world of real broken files (tests/faults/battery.py)."""

from __future__ import annotations

import pytest

from tests.faults.battery import build_world


@pytest.fixture(scope="session")
def narrow_store(tmp_path_factory, tiny_tokenizer):
    """A store of a 16-wide tiny Llama: a store of another width than the tiny runs take."""
    import torch
    import transformers as tf

    from sae_kit.harvest import HarvestConfig, harvest

    config = tf.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, max_position_embeddings=64, vocab_size=len(tiny_tokenizer),
                            bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("narrow-llama")
    tf.LlamaForCausalLM(config).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path_factory.mktemp("narrow-store") / "store"
    return harvest(HarvestConfig(out=str(out), model=str(model_dir), hooks=("resid.1",), tokens=1024, context_len=32,
                                 shard_tokens=512), progress=False)


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_store, tiny_run, tiny_analysis, tiny_llama_dir, narrow_store):
    return build_world(tmp_path_factory.mktemp("world"), tiny_store, tiny_run, tiny_analysis, tiny_llama_dir,
                       narrow_store)
