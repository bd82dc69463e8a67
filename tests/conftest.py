"""Shared fixtures: tiny random causal LMs of four architectures and a tiny trained tokenizer.

Nothing is downloaded: models are built from configs with a fixed seed and saved to a temporary
directory in Hugging Face format, so tests exercise the same loading code users run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "gemma")
VOCAB_SIZE = 256
D_MODEL = 32
N_LAYERS = 3


def build_tokenizer():
    """A byte-level BPE tokenizer trained on stdlib docstrings, with <bos>/<eos>/<pad>."""
    from itertools import islice

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sae_kit.lm.corpus import python_docstrings

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(islice(python_docstrings(), 300), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_model(arch: str, vocab_size: int, seed: int = 0):
    """A tiny random causal LM of architecture `arch` (one of ARCHITECTURES)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if arch == "llama":
        config = tf.LlamaConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common)
        cls = tf.LlamaForCausalLM
    elif arch == "gpt2":
        config = tf.GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=256, **common)
        cls = tf.GPT2LMHeadModel
    elif arch == "gpt_neox":
        config = tf.GPTNeoXConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                  num_attention_heads=4, max_position_embeddings=256, **common)
        cls = tf.GPTNeoXForCausalLM
    elif arch == "gemma":
        config = tf.GemmaConfig(hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                max_position_embeddings=256, **common)
        cls = tf.GemmaForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    return cls(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """arch -> directory holding a saved tiny model + tokenizer (HF format)."""
    dirs = {}
    for arch in ARCHITECTURES:
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        build_model(arch, len(tiny_tokenizer)).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        dirs[arch] = path
    return dirs


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_llama_dir) -> Path:
    """A small real activation store from the tiny Llama: resid.1 and mlp.1, ~8k tokens, 4 shards."""
    from sae_kit.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("store") / "store"
    cfg = HarvestConfig(out=str(out), model=str(tiny_llama_dir), hooks=("resid.1", "mlp.1"), tokens=8192,
                        context_len=32, shard_tokens=2048, batch_size=16)
    return harvest(cfg, progress=False)


@pytest.fixture(scope="session")
def tiny_mlp_store(tmp_path_factory, tiny_llama_dir) -> Path:
    """A transcoder's store from the tiny Llama: mlp_in.1 (the MLP's input) and mlp.1 (its output),
    harvested in one pass, 4096 tokens, 4 shards."""
    from sae_kit.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("mlp-store") / "store"
    cfg = HarvestConfig(out=str(out), model=str(tiny_llama_dir), hooks=("mlp_in.1", "mlp.1"), tokens=4096,
                        context_len=32, shard_tokens=1024, batch_size=16)
    return harvest(cfg, progress=False)


# ----------------------------------------------------------------------------- a calibrated SAE and its analysis


HOOK = "model.layers.1"
D_SAE = 48
TOP_K, QUANTILES, HIST_BINS = 6, 4, 16


def calibrated_autoencoder(store_path, hook: str = HOOK, d_sae: int = D_SAE, arch: str = "sae", seed: int = 0, k=None):
    """A real autoencoder whose feature i fires on a chosen fraction of tokens (log-spaced
    from 1e-3 to 0.2): random unit decoder directions, W_enc = W_decᵀ, b_enc from quantiles."""
    from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
    from sae_kit.harvest import ActivationStore

    store = ActivationStore(store_path)
    torch.manual_seed(seed)
    d_in = store.d_in(hook)
    cfg = AutoencoderConfig(arch=arch, d_in=d_in, d_sae=d_sae, k=k, hook="resid.1",
                            metadata={"store": str(store.path), "hook_module": hook, "model": store.manifest["model"]})
    sae = build_autoencoder(cfg)
    x = store.gather(hook, torch.arange(min(4096, store.n_tokens)))["acts"]
    with torch.no_grad():
        W = torch.randn(d_sae, d_in)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_dec.copy_(x.mean(0))
        pre = (x - sae.b_dec) @ sae.W_enc
        density = torch.logspace(-3, math.log10(0.2), d_sae)
        sae.b_enc.copy_(-torch.stack([torch.quantile(pre[:, f], 1 - density[f]) for f in range(d_sae)]))
    return sae.eval()


@pytest.fixture(scope="session")
def tiny_run(tiny_store, tmp_path_factory):
    """A saved run directory (config.json + weights.safetensors) of a calibrated SAE on the tiny store."""
    return calibrated_autoencoder(tiny_store).save(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def tiny_analysis(tiny_run, tmp_path_factory):
    from sae_kit.analysis import AnalysisConfig, analyze

    cfg = AnalysisConfig(run=str(tiny_run), out=str(tmp_path_factory.mktemp("analysis") / "A"), top_k=TOP_K,
                         n_quantiles=QUANTILES, hist_bins=HIST_BINS, batch_size=1000)
    return analyze(cfg, progress=False)
