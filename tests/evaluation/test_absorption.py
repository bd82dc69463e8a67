"""Feature absorption: the per-token scores on a constructed case, the main latents by k-sparse probing
(with a split feature), first-letter prompts, and the whole task on a tiny Llama with a larger vocabulary."""

from __future__ import annotations

import math
from itertools import islice

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.evaluation.absorption import (
    LETTERS,
    TEMPLATE,
    absorption_result,
    absorption_scores,
    alphabetic_vocabulary,
    main_latents,
    prepare_first_letter,
    prompt_ids,
    prompt_pieces,
    word_activations,
)
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from tests.conftest import build_model

# probe direction p̂ = e1; latent 0 is the main latent (W_dec = e1), latent 1 absorbs (cos 0.8),
# latent 2 is unrelated (cos 0)
W_DEC = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
PROBE = torch.tensor([3.0, 0.0])  # any norm
X = torch.tensor([[2.0, 0.0],    # the main latent carries the letter
                  [2.0, 1.5],    # main silent, the absorber carries all of it: full absorption
                  [0.5, 3.0],    # main silent, nothing aligned fires: not absorption
                  [2.0, 0.75]])  # main carries half, the absorber the other half: partial
Z = torch.tensor([[2.0, 0.0, 0.0],
                  [0.0, 2.5, 0.0],
                  [0.0, 0.0, 3.0],
                  [1.0, 1.25, 0.0]])


def test_absorption_scores_on_a_constructed_case():
    fraction, full = absorption_scores(X, Z, W_DEC, PROBE, main=[0])
    # token 1: M = 2 ≥ a = 2 -> 0. token 2: M = 0, A = 2.5·0.8 = 2 = a -> 1, and the absorber's share
    # c/a = 1 ≥ 0.4 with cos 0.8 ≥ 0.025 -> full. token 3: A = 0 -> 0. token 4: a = 2, M = 1, A = 1 ->
    # min(1, 2 − 1) / (1 + 1) = 0.5; the main latent fires, so not full.
    assert fraction.tolist() == pytest.approx([0.0, 1.0, 0.0, 0.5])
    assert full.tolist() == [False, True, False, False]
    assert float(fraction.mean()) == pytest.approx(0.375) and float(full.float().mean()) == pytest.approx(0.25)


def test_absorbers_must_be_aligned_with_the_probe():
    W = W_DEC.clone()
    W[1] = torch.tensor([0.05, math.sqrt(1 - 0.05 ** 2)])  # cos 0.05: below 0.1 (fraction), above 0.025 (full)
    z = torch.tensor([[0.0, 40.0, 0.0]])  # contributes 40 · 0.05 = 2 along p̂
    fraction, full = absorption_scores(torch.tensor([[2.0, 40.0]]), z, W, PROBE, main=[0])
    assert fraction.tolist() == [0.0] and full.tolist() == [True]
    W[1] = torch.tensor([0.01, math.sqrt(1 - 0.01 ** 2)])  # cos 0.01: below both thresholds
    fraction, full = absorption_scores(torch.tensor([[2.0, 40.0]]), torch.tensor([[0.0, 200.0, 0.0]]), W, PROBE, [0])
    assert fraction.tolist() == [0.0] and full.tolist() == [False]


def test_main_latents_grow_while_f1_jumps():
    """The letter is split over two latents (60 % / 40 % of its words): k = 1 gives F1 0.75,
    k = 2 gives 1, k = 3 adds nothing -> main latents [0, 1]."""
    def split(n_pos, n_neg, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.rand(n_pos + n_neg, 6, generator=g) * 0.01
        z[:, :2] = 0
        cut = int(0.6 * n_pos)
        z[:cut, 0] = 1.0
        z[cut:n_pos, 1] = 1.0
        y = torch.zeros(n_pos + n_neg, dtype=torch.bool)
        y[:n_pos] = True
        return z, y
    z_train, y_train = split(50, 200, 0)
    z_test, y_test = split(20, 80, 1)
    main, f1 = main_latents(z_train, y_train, z_test, y_test, max_k=4)
    assert main == [0, 1]
    assert f1[1] == pytest.approx(0.75) and f1[2] == pytest.approx(1.0)


def test_alphabetic_vocabulary_and_prompts(tiny_tokenizer):
    vocabulary = alphabetic_vocabulary(tiny_tokenizer)
    texts = [t for _, t in vocabulary]
    assert texts and all(t.lstrip(" ").isalpha() and t.lstrip(" ").isascii() for t in texts)
    assert "<bos>" not in texts
    pieces = prompt_pieces(tiny_tokenizer)
    (a_id, a_text), (b_id, b_text) = vocabulary[:2]
    ids = prompt_ids(pieces, b_id, [(a_id, a_text)], prepend_bos=True)
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[-1] == b_id
    decoded = tiny_tokenizer.decode(ids[1:])
    assert decoded == f"\n{a_text}{TEMPLATE} {a_text.strip()[0].upper()}\n{b_text}"


def test_tiny_vocabulary_degrades_with_a_clear_message(tiny_llama_dir, tiny_tokenizer):
    from sae_kit.lm.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    module = resolve_hooks(loaded.model, ["resid.1"])[0]
    with pytest.raises(SaeKitError, match="single-token alphabetic words.*too small"):
        prepare_first_letter(loaded.model, tiny_tokenizer, module, n_words=2000)


def test_word_activations_read_each_prompts_last_token(wide_vocabulary_llama):
    lm, tokenizer = wide_vocabulary_llama
    module = resolve_hooks(lm, ["resid.1"])[0]
    pieces = prompt_pieces(tokenizer)
    (a, a_text), (b, b_text), (c, _) = alphabetic_vocabulary(tokenizer)[100:103]
    prompts = [prompt_ids(pieces, c, [(a, a_text), (b, b_text)], True), prompt_ids(pieces, a, [], True)]
    batched = word_activations(lm, module, prompts, batch_size=2, pad_id=2)  # the second is right-padded
    for row, prompt in zip(batched, prompts):
        alone = run_to_hooks(lm, torch.tensor([prompt]), [module])[module][0, -1]
        assert torch.allclose(row, alone, atol=1e-5)


@pytest.fixture(scope="module")
def wide_vocabulary_llama():
    """A tiny random Llama with a 1,500-token BPE vocabulary, so hundreds of words qualify."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sae_kit.lm.corpus import python_docstrings

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(islice(python_docstrings(), 400), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    return build_model("llama", len(tokenizer)), tokenizer


def test_first_letter_task_end_to_end(wide_vocabulary_llama):
    lm, tokenizer = wide_vocabulary_llama
    module = resolve_hooks(lm, ["resid.1"])[0]
    data = prepare_first_letter(lm, tokenizer, module, n_words=400, icl_examples=3, seed=0, batch_size=64)
    assert len(data.train_words) == 320 and len(data.test_words) == 80
    assert not set(data.train_words) & set(data.test_words)
    assert data.train_x.shape == (320, 32) and data.probe_coef.shape == (len(data.letters), 32)
    assert all(LETTERS[int(y)] == w.strip()[0].lower() for w, y in zip(data.train_words, data.train_y))
    torch.manual_seed(0)
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=64)).eval()
    result = absorption_result(sae, data, max_k=5, min_probe_f1=0.0)
    assert result["n_letters_probed"] == len(data.letters) and result["letters"]
    for letter, r in result["letters"].items():
        assert 1 <= r["num_split_features"] <= 5 and len(r["main_latents"]) == r["num_split_features"]
        if r["num_probe_true_positives"]:
            assert 0 <= r["full_absorption_rate"] <= 1 and 0 <= r["mean_absorption_fraction"] <= 1
            assert r["num_full_absorption"] <= r["num_probe_true_positives"]
    kept = [r for r in result["letters"].values() if r["num_probe_true_positives"] > 0]
    assert result["mean_full_absorption_score"] == pytest.approx(sum(r["full_absorption_rate"] for r in kept) / len(kept))
    assert "warning" in result and "SAEBench needs 20" in result["warning"]  # a tiny vocabulary: fewer letters
