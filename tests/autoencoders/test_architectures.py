"""BatchTopK, JumpReLU, Gated and Matryoshka: each loss on explicit weights against a hand
computation, the straight-through gradients against their formulas, the batch selection and the
inference threshold, gated's frozen-decoder term, matryoshka's prefix losses, bfloat16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, TrainingState, build_autoencoder
from sae_kit.autoencoders import batchtopk as batchtopk_module
from sae_kit.autoencoders.batchtopk import batch_topk, batch_topk_cut
from sae_kit.autoencoders.jumprelu import jumprelu, step
from sae_kit.autoencoders.matryoshka import matryoshka_prefixes

NEW_ARCHS = ("batchtopk", "jumprelu", "gated", "matryoshka")


def build(arch: str, d_in: int = 2, d_sae: int = 3, **overrides):
    return build_autoencoder(AutoencoderConfig(arch=arch, d_in=d_in, d_sae=d_sae, **overrides))


def set_weights(model, W_enc, b_enc, W_dec, b_dec) -> None:
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor(W_enc))
        model.b_enc.copy_(torch.tensor(b_enc))
        model.W_dec.copy_(torch.tensor(W_dec))
        model.b_dec.copy_(torch.tensor(b_dec))


# ----------------------------------------------------------------------------- BatchTopK


def test_batch_topk_keeps_the_b_times_k_largest_of_the_whole_batch():
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0],
                        [0.5, 0.2, 0.1, 6.0]])
    z, cut = batch_topk(pre, k=2)  # B·k = 4 survivors over the batch: 6, 5, 4, 3
    assert cut.item() == 3.0
    assert z.tolist() == [[5.0, 4.0, 3.0, 0.0], [0.0, 0.0, 0.0, 6.0]]  # 3 latents on token 0, 1 on token 1
    few = torch.tensor([[1.0, -1.0], [-2.0, -3.0]])  # fewer positive entries than B·k = 2: all kept
    z, cut = batch_topk(few, k=1)
    assert z.tolist() == [[1.0, 0.0], [0.0, 0.0]] and cut.item() == 1.0


@pytest.mark.parametrize("skewed", [False, True])
def test_fast_batch_cut_equals_the_plain_flattened_topk(skewed, monkeypatch):
    torch.manual_seed(0)
    acts = torch.rand(64, 200)
    if skewed:  # one token holds more than its 4·k candidates of the batch's top: the fallback decides
        acts[7] += 10.0
    n = 64 * 3
    plain = acts.flatten().topk(n).values.min()
    assert batch_topk_cut(acts, n) == plain
    monkeypatch.setattr(batchtopk_module, "CANDIDATES_PER_K", 1000)  # candidates = the whole row
    assert batch_topk_cut(acts, n) == plain


def test_batchtopk_threshold_is_a_running_average_and_replaces_the_batch_at_inference():
    model = build("batchtopk", k=1, topk_threshold_lr=0.5).train()
    assert model.threshold.item() == -1.0  # not estimated yet: encode is a plain ReLU
    set_weights(model, [[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]], [0.0, 0.0, 0.0], torch.eye(3, 2).tolist(), [0.0, 0.0])
    x1 = torch.tensor([[3.0, 1.0], [0.5, 2.0]])  # pre = [[3, 1, 2], [0.5, 2, -1.5]]; B·k = 2 kept: 3 and 2 (2 twice)
    out = model.training_loss(x1, TrainingState())
    assert out.z.tolist() == [[3.0, 0.0, 2.0], [0.0, 2.0, 0.0]]  # a tie at the cut keeps both 2s
    assert model.threshold.item() == 2.0  # first batch: θ = its cut
    x2 = torch.tensor([[5.0, 0.0], [0.0, 4.0]])  # pre = [[5, 0, 5], [0, 4, -4]]: cut 5
    model.training_loss(x2, TrainingState())
    assert model.threshold.item() == pytest.approx(0.5 * 2.0 + 0.5 * 5.0)  # θ ← (1 − r)θ + r·cut
    model.eval()
    with torch.no_grad():
        x = torch.tensor([[4.0, 1.0]])  # pre = [4, 1, 3]; θ = 3.5: one token alone, JumpReLU form
        assert model.encode(x).tolist() == [[4.0, 0.0, 0.0]]
        assert model(x).z.tolist() == [[4.0, 0.0, 0.0]]  # eval-mode forward uses θ too
    assert model.saelens_tensors()["threshold"].tolist() == [3.5, 3.5, 3.5]


def test_batchtopk_loss_and_auxk_on_explicit_weights():
    model = build("batchtopk", k=1).train()
    set_weights(model, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.0, 0.0, 0.0],
                [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 1.0])
    x = torch.tensor([[2.0, 1.0], [0.0, 4.0]])  # pre = (x − b_dec) W_enc = [[2, 0, 0], [0, 3, 0]]
    out = model.training_loss(x, TrainingState())
    assert out.z.tolist() == [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
    # x̂ = z W_dec + b_dec = [[2, 1], [0, 4]]: exact
    assert out.losses["reconstruction"].item() == pytest.approx(0.0)
    dead = torch.tensor([False, False, True])
    assert "auxk" in model.training_loss(x, TrainingState(dead_mask=dead)).losses


# ----------------------------------------------------------------------------- JumpReLU


def test_jumprelu_loss_on_explicit_weights():
    model = build("jumprelu", l0_coefficient=0.5)
    set_weights(model, [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [0.0, -0.5, 0.0],
                [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [0.0, 0.0])
    with torch.no_grad():
        model.log_threshold.copy_(torch.tensor([0.5, 0.4, 3.5]).log())
    x = torch.tensor([[1.0, 1.0]])
    # pre = [1, 0.5, 2]; θ = [0.5, 0.4, 3.5] -> z = [1, 0.5, 0]; x̂ = [1, 1]; L0 = 2
    out = model.training_loss(x, TrainingState(sparsity_scale=0.5))  # λ = 0.5 · 0.5
    assert out.z.tolist() == [[1.0, 0.5, 0.0]]
    assert out.x_hat.tolist() == [[1.0, 1.0]]
    assert out.losses["reconstruction"].item() == pytest.approx(0.0)
    assert out.losses["l0"].item() == pytest.approx(0.25 * 2)
    tanh = build("jumprelu", l0_coefficient=0.5, jumprelu_sparsity="tanh", tanh_scale=4.0)
    tanh.load_state_dict(model.state_dict())
    expected = 0.5 * (math.tanh(4 * 1.0 * 1.0) + math.tanh(4 * 0.5 * 2.0))  # c · z_i · ‖W_dec,i‖
    assert tanh.training_loss(x, TrainingState()).losses["tanh"].item() == pytest.approx(expected, rel=1e-6)


def test_jumprelu_pre_activation_penalty_on_dead_latents():
    model = build("jumprelu", pre_act_loss_coefficient=0.1)
    set_weights(model, [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [0.0, -0.5, 0.0],
                [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [0.0, 0.0])
    with torch.no_grad():
        model.log_threshold.copy_(torch.tensor([0.5, 0.4, 3.5]).log())
    assert model.wants_dead_mask()
    x = torch.tensor([[1.0, 1.0]])
    assert "pre_act" not in model.training_loss(x, TrainingState()).losses
    dead = torch.tensor([False, True, True])
    # dead latents 1, 2: ReLU(θ − pre) ‖W_dec,i‖ = ReLU(0.4 − 0.5)·2 + ReLU(3.5 − 2)·√2
    out = model.training_loss(x, TrainingState(dead_mask=dead))
    assert out.losses["pre_act"].item() == pytest.approx(0.1 * 1.5 * math.sqrt(2), rel=1e-6)


def test_jumprelu_straight_through_gradients_match_the_formulas():
    eps = 0.2
    pre = torch.tensor([[1.05, 0.5, 2.0], [0.95, 0.61, 0.0]], requires_grad=True)
    theta = torch.tensor([1.0, 0.6, 2.3], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (jumprelu(pre, theta, eps) * g).sum().backward()
    # ∂z/∂pre = H(pre − θ); ∂z/∂θ = −(θ/ε) K((pre − θ)/ε), K = 1[|u| < ½]: |pre − θ| < 0.1
    inside = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # (0.05, −0.1+, −0.3), (−0.05, 0.01, −2.3)
    inside[0, 1] = 0.0  # |0.5 − 0.6| = 0.1 is not < 0.1
    assert torch.equal(pre.grad, g * (pre.detach() > theta.detach()))
    assert torch.allclose(theta.grad, -(theta.detach() / eps) * (inside * g).sum(0))
    pre.grad, theta.grad = None, None
    (step(pre, theta, eps) * g).sum().backward()
    assert pre.grad is None or torch.all(pre.grad == 0)  # H passes no gradient to the pre-activations
    assert torch.allclose(theta.grad, -(1 / eps) * (inside * g).sum(0))


def test_jumprelu_threshold_learning_rate_scale_reaches_adam():
    model = build("jumprelu", jumprelu_threshold_lr_scale=20.0)
    groups = model.optimizer_groups()
    assert groups[1]["params"] == [model.log_threshold] and groups[1]["lr_scale"] == 20.0
    assert len(groups[0]["params"]) + 1 == len(list(model.parameters()))


# ----------------------------------------------------------------------------- Gated


def gated_model():
    model = build("gated", l1_coefficient=0.5)
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        model.b_gate.copy_(torch.tensor([0.0, -0.5, 0.0]))
        model.r_mag.copy_(torch.tensor([0.0, math.log(2.0), 0.0]))
        model.b_mag.copy_(torch.tensor([0.5, 0.0, -3.0]))
        model.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        model.b_dec.copy_(torch.tensor([0.0, 0.0]))
    return model


def test_gated_loss_on_explicit_weights():
    model = gated_model()
    assert set(model.state_dict()) == {"W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"}
    assert model.b_enc is model.b_gate
    x = torch.tensor([[1.0, 1.0]])
    # u = [1, 1, 2]; π_gate = [1, 0.5, 2]; π_mag = u ⊙ exp(r_mag) + b_mag = [1.5, 2, −1]
    # z = 1[π_gate > 0] ⊙ ReLU(π_mag) = [1.5, 2, 0]; x̂ = [1.5, 4]; ‖x − x̂‖² = 0.25 + 9
    # L1 = λ Σ ReLU(π_gate)‖W_dec,i‖ = 0.5 (1·1 + 0.5·2 + 2·√2)
    # aux: ReLU(π_gate) W_dec + b_dec = [1 + 2, 1 + 2] = [3, 3]: ‖x − ·‖² = 8
    out = model.training_loss(x, TrainingState())
    assert out.z.tolist() == [[1.5, 2.0, 0.0]]
    assert out.losses["reconstruction"].item() == pytest.approx(9.25)
    assert out.losses["l1"].item() == pytest.approx(0.5 * (2 + 2 * math.sqrt(2)), rel=1e-6)
    assert out.losses["auxiliary"].item() == pytest.approx(8.0)
    assert torch.equal(model.pre_activation(x), torch.tensor([[1.0, 0.5, 2.0]]))  # π_gate


def test_gated_auxiliary_term_decodes_through_a_frozen_decoder():
    model = gated_model()
    x = torch.tensor([[1.0, 1.0], [0.5, -2.0]])
    model.training_loss(x, TrainingState()).losses["auxiliary"].backward()
    assert model.W_dec.grad is None  # no gradient reaches the decoder through this term
    assert torch.all(model.b_dec.grad.abs() > 0)  # b_dec: only through the encoder input x − b_dec
    assert model.W_enc.grad.abs().sum() > 0 and model.b_gate.grad.abs().sum() > 0  # it trains the gate path
    assert model.r_mag.grad is None or torch.all(model.r_mag.grad == 0)  # and not the magnitudes
    frozen_b_dec = model.b_dec.grad.clone()
    # the b_dec gradient is exactly the encoder-input path: −(∂L/∂π_gate) W_encᵀ summed over tokens
    gate = (x - model.b_dec) @ model.W_enc + model.b_gate
    d_gate = (2 / 2) * ((torch.relu(gate) @ model.W_dec + model.b_dec - x) @ model.W_dec.T) * (gate > 0)
    assert torch.allclose(frozen_b_dec, -(d_gate @ model.W_enc.T).sum(0).detach(), atol=1e-6)


def test_gated_absorbs_an_input_offset_in_both_paths():
    model = gated_model()
    offset = torch.tensor([0.3, -0.7])
    x = torch.randn(5, 2)
    with torch.no_grad():
        expected = model.encode(x + offset)
        model.absorb_input_offset_(offset)
        assert torch.allclose(model.encode(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- Matryoshka


def test_matryoshka_default_and_given_prefixes():
    assert matryoshka_prefixes(4608, None) == (288, 576, 1152, 2304, 4608)
    assert matryoshka_prefixes(12, None) == (1, 3, 6, 12)
    assert matryoshka_prefixes(2048, (128, 512)) == (128, 512, 2048)
    assert matryoshka_prefixes(2048, (128, 2048)) == (128, 2048)


def test_matryoshka_prefix_losses_on_explicit_weights():
    model = build("matryoshka", d_sae=3, k=2, matryoshka_prefixes=(1, 2)).train()
    set_weights(model, [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], [0.0, 0.0, 0.0],
                [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.0])
    x = torch.tensor([[2.0, 1.0]])  # pre = [2, 1, 2]; B·k = 2 kept: z = [2, 0, 2]
    out = model.training_loss(x, TrainingState())
    assert out.z.tolist() == [[2.0, 0.0, 2.0]]
    # prefix 1: x̂ = [2, 0] -> 1; prefix 2: the same (z_1 = 0) -> 1; all: x̂ = [4, 2] -> 4 + 1 = 5
    assert set(out.losses) == {"prefix_1", "prefix_2", "reconstruction"}
    assert out.losses["prefix_1"].item() == pytest.approx(1.0)
    assert out.losses["prefix_2"].item() == pytest.approx(1.0)
    assert out.losses["reconstruction"].item() == pytest.approx(5.0)
    assert out.loss.item() == pytest.approx(7.0) and out.x_hat.tolist() == [[4.0, 2.0]]


# ----------------------------------------------------------------------------- all four


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_bfloat16_autocast_loss_and_backward(arch):
    torch.manual_seed(0)
    model = build(arch, d_in=16, d_sae=64, k=4).train()
    x = torch.randn(32, 16) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_loss(x, TrainingState(dead_mask=torch.arange(64) < 8))
    out.loss.backward()
    assert torch.isfinite(out.loss.float())
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), name
    plain = build(arch, d_in=16, d_sae=64, k=4).train()
    plain.load_state_dict(model.state_dict())
    reference = plain.training_loss(x, TrainingState(dead_mask=torch.arange(64) < 8))
    assert reference.losses["reconstruction"].item() == pytest.approx(out.losses["reconstruction"].item(), rel=0.1)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_threshold_buffer_is_saved_and_loaded(arch, tmp_path):
    from sae_kit.autoencoders import load_autoencoder

    model = build(arch, d_in=4, d_sae=8, k=2)
    with torch.no_grad():
        model.threshold.fill_(0.75)
    model.save(tmp_path / "run")
    assert load_autoencoder(tmp_path / "run").threshold.item() == 0.75
