"""Evaluating transcoders: the splice replaces the MLP's output with the prediction from the MLP's
input. Checked exactly on a tiny GPT-2 with a ReLU MLP, whose MLP *is* a transcoder (and a skip
transcoder, through ReLU(a) = a + ReLU(−a)), then end to end on the tiny Llama store:
train → evaluate → analyze → example windows → prompt view."""

from __future__ import annotations

import pytest
import torch

from sae_kit.analysis import AnalysisConfig, analyze
from sae_kit.analysis.examples import encoded_activations, example_windows, feature_activations
from sae_kit.analysis.prompt_view import prompt_features_for_run
from sae_kit.autoencoders import AutoencoderConfig, RunInfo, build_autoencoder, load_autoencoder
from sae_kit.evaluation import metrics
from sae_kit.evaluation.evaluator import EvalConfig, evaluate
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.training import TrainConfig, train

IN, OUT = "transformer.h.1.mlp:input", "transformer.h.1.mlp"


@pytest.fixture(scope="module")
def relu_gpt2(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 whose MLPs are ReLU(x W_fc + b_fc) W_proj + b_proj, and a store of mlp_in.1 / mlp.1."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=64,
                           activation_function="relu", bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = tf.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # a bigger MLP than the init's, so that getting it wrong shows in the CE
        model.transformer.h[1].mlp.c_proj.weight.mul_(20)
    path = tmp_path_factory.mktemp("relu-gpt2")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    store = harvest(HarvestConfig(out=str(path / "store"), model=str(path), hooks=("mlp_in.1", "mlp.1"), tokens=2048,
                                  context_len=32, shard_tokens=1024, batch_size=16), progress=False)
    return model, store


def exact_transcoder(model, store, tmp_path, skip: bool):
    """The MLP of block 1 as a transcoder, saved as a run of that store. Skip variant:
    ReLU(xW + b)P + c = x (WP) + (bP + c) + ReLU(−xW − b)P."""
    mlp = model.transformer.h[1].mlp
    W, b, P, c = mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias  # Conv1D: [in, out]
    manifest = ActivationStore(store).manifest
    info = RunInfo(store=str(store), hook="mlp_in.1", hook_module=IN, target_hook="mlp.1", target_module=OUT,
                   context_len=32, model=manifest["model"]["spec"])
    arch = "skip-transcoder" if skip else "transcoder"
    cfg = AutoencoderConfig(arch=arch, d_in=32, d_sae=W.shape[1], hook="mlp_in.1", target_hook="mlp.1",
                            metadata=info.to_metadata(manifest["model"]))
    tc = build_autoencoder(cfg)
    with torch.no_grad():
        if skip:
            tc.W_enc.copy_(-W), tc.b_enc.copy_(-b), tc.W_dec.copy_(P), tc.b_dec.copy_(b @ P + c), tc.W_skip.copy_(W @ P)
        else:
            tc.W_enc.copy_(W), tc.b_enc.copy_(b), tc.W_dec.copy_(P), tc.b_dec.copy_(c)
    return tc.save(tmp_path / arch)


@pytest.mark.parametrize("skip", [False, True])
def test_an_exact_transcoder_spliced_in_leaves_the_model_unchanged(relu_gpt2, tmp_path, skip):
    model, store = relu_gpt2
    run = exact_transcoder(model, store, tmp_path, skip)
    [result] = evaluate(EvalConfig(run=str(run), ce_contexts=8)).values()
    rec, sp = result["reconstruction"], result["spliced"]
    assert result["hook"] == IN and result["target"] == OUT
    assert rec["fvu"] < 1e-10 and rec["n_tokens"] > 0  # scored against the MLP's output, not its input
    assert sp["ce_spliced"] == pytest.approx(sp["ce_clean"], abs=1e-5) and sp["kl_clean_spliced"] < 1e-8
    assert sp["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert abs(sp["ce_zero_ablated"] - sp["ce_clean"]) > 1e-2  # the MLP's output matters to the CE here


def test_an_inexact_transcoder_moves_the_spliced_ce(relu_gpt2, tmp_path):
    model, store = relu_gpt2
    run = exact_transcoder(model, store, tmp_path, skip=False)
    tc = load_autoencoder(run)
    with torch.no_grad():
        tc.W_dec.mul_(0.5)  # half of the MLP's output
    tc.save(run)
    [result] = evaluate(EvalConfig(run=str(run), ce_contexts=8)).values()
    _, y = next(ActivationStore(store).batches((IN, OUT), 10**6, split="eval", shuffle=False, drop_last=False))
    c = model.transformer.h[1].mlp.c_proj.bias.detach()
    expected = float(metrics.fvu(y, c + (y - c) / 2))  # ŷ − c = (y − c)/2
    assert result["reconstruction"]["fvu"] == pytest.approx(expected, rel=1e-4)
    assert result["spliced"]["kl_clean_spliced"] > 1e-6


def test_train_evaluate_analyze_a_skip_transcoder_end_to_end(tiny_mlp_store, tmp_path):
    [run] = train(TrainConfig(store=str(tiny_mlp_store), out=str(tmp_path / "run"), hook="mlp_in.1", target="mlp.1",
                              archs=("skip-transcoder",), expansion=2, batch_size=128, tokens=128 * 24, lr=3e-3,
                              log_every=8, norm_estimation_tokens=1024, checkpoint_every_tokens=None), progress=False)
    model = load_autoencoder(run)
    store = ActivationStore(tiny_mlp_store)
    # evaluate: FVU of ŷ(x) against y over the eval split, by hand
    [result] = evaluate(EvalConfig(run=str(run), ce_contexts=4)).values()
    x, y = next(store.batches(("model.layers.1.mlp:input", "model.layers.1.mlp"), 10**6, split="eval",
                              shuffle=False, drop_last=False))
    with torch.no_grad():
        by_hand = float(metrics.fvu(y, model.reconstruct(x)))
    assert result["reconstruction"]["n_tokens"] == x.shape[0]
    assert result["reconstruction"]["fvu"] == pytest.approx(by_hand, rel=1e-4)
    assert result["spliced"]["ce_spliced"] > 0 and result["target"] == "model.layers.1.mlp"
    # analyze encodes the input hook; the example windows re-encode it
    analysis = analyze(AnalysisConfig(run=str(run), out=str(tmp_path / "A"), top_k=3, n_quantiles=2, hist_bins=8,
                                      batch_size=512), progress=False)
    assert analysis.hook == "model.layers.1.mlp:input"
    fired = int(torch.nonzero(analysis.max_activation > 0)[0])
    with torch.no_grad():
        z_all = model.encode(store.gather(analysis.hook, torch.arange(store.n_tokens))["acts"])
    assert float(analysis.max_activation[fired]) == pytest.approx(float(z_all[:, fired].max()), rel=1e-5)
    windows = example_windows(analysis, [fired], before=2, after=1)
    inside = windows.tokens >= 0
    idx = windows.centers[..., None] + torch.arange(-2, 2)
    assert torch.allclose(windows.activations[inside], z_all[idx[inside], fired], atol=1e-5)
    # the prompt view encodes the MLP input of the language model
    features = prompt_features_for_run(str(run), "Return the sum of two numbers.", top=2, device="cpu")
    assert features.activations.shape[1] == model.d_sae and (features.activations >= 0).all()


def test_window_fast_path_of_a_transcoder_encodes_x_without_b_dec(tiny_mlp_store):
    """The pair-by-pair and matmul fast paths agree with encode for a transcoder whose b_dec (in the
    target's space) is far from zero and of another width."""
    torch.manual_seed(0)
    tc = build_autoencoder(AutoencoderConfig(arch="transcoder", d_in=32, d_sae=40, d_out=24))
    with torch.no_grad():
        tc.b_dec.normal_(0, 5.0)
        tc.b_enc.normal_(0, 0.5)
    x = ActivationStore(tiny_mlp_store).gather("model.layers.1.mlp:input", torch.arange(50, 350))["acts"]
    rows = torch.randint(0, x.shape[0], (400,), generator=torch.Generator().manual_seed(1))
    feature = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = encoded_activations(tc.encode, x, rows, feature)
        for n in (400, 3):  # many pairs: the matmul path; few: pair by pair
            assert torch.allclose(feature_activations(tc, x, rows[:n], feature[:n]), plain[:n], atol=1e-5)
    assert (plain > 0).any()
