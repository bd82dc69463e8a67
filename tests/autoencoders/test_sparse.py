"""The sparse paths (`sae_kit.autoencoders.sparse`) against the plain dense ones: the two shared
autograd Functions against dense products, then every sparse architecture's training loss —
loss terms, reconstruction, latents and the gradient of every parameter — in float32 (tight) and
under bfloat16 autocast (loose), and the 'auto' choice between the paths."""

from __future__ import annotations

import math

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, TrainingState, build_autoencoder
from sae_kit.autoencoders.sparse import (MIN_SPARSE_ELEMENTS, Pairs, as_dense, decode_pairs,
                                         encode_at_pairs, switch_density, wants_sparse)

D_IN, D_SAE, BATCH = 12, 192, 48

# (name, AutoencoderConfig fields, bias that makes the code sparse)
CASES = [
    ("sae", {"arch": "sae"}, -0.25),
    ("sae-unit", {"arch": "sae", "decoder_norm": "unit"}, -1.0),
    ("topk", {"arch": "topk", "k": 6}, 0.0),
    ("batchtopk", {"arch": "batchtopk", "k": 6}, 0.0),
    ("matryoshka", {"arch": "matryoshka", "k": 6, "matryoshka_prefixes": (8, 40, 100)}, 0.0),
    ("jumprelu-step", {"arch": "jumprelu", "jumprelu_bandwidth": 0.2, "jumprelu_init_threshold": 1.0}, 0.0),
    ("jumprelu-tanh", {"arch": "jumprelu", "jumprelu_bandwidth": 0.2, "jumprelu_init_threshold": 1.0,
                       "jumprelu_sparsity": "tanh"}, 0.0),
    ("gated", {"arch": "gated"}, -1.0),
    ("transcoder-relu", {"arch": "transcoder", "d_out": 10}, -1.0),
    ("transcoder-topk", {"arch": "transcoder", "d_out": 10, "transcoder_activation": "topk", "k": 5}, 0.0),
    ("skip-transcoder", {"arch": "skip-transcoder", "d_out": 10}, -1.0),
    ("skip-transcoder-topk", {"arch": "skip-transcoder", "d_out": 10, "transcoder_activation": "topk", "k": 5}, 0.0),
]


def build(fields: dict, bias: float):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(d_in=D_IN, d_sae=D_SAE, **fields))
    with torch.no_grad():  # weights away from their init, so every gradient term is exercised
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.b_enc.add_(bias)
        model.b_dec.add_(0.1 * torch.randn_like(model.b_dec))
        if hasattr(model, "W_skip"):
            model.W_skip.normal_(0, 0.1)
    return model.train()


def run(model, kernels: str, x, y, state, autocast: bool):
    model.kernels = kernels
    model.zero_grad(set_to_none=True)
    if hasattr(model, "threshold") and isinstance(model.threshold, torch.Tensor) and "threshold" in model._buffers:
        model.threshold.fill_(-1.0)  # BatchTopK's running θ: both paths start from "not estimated"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model.training_loss(x, state) if y is None else model.training_loss(x, state, target=y)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return out, grads, buffers


def close(a: torch.Tensor, b: torch.Tensor, rel: float, what: str) -> None:
    """max |a − b| ≤ rel · max |a| (+ a tiny absolute floor for all-zero tensors)."""
    a, b = a.float(), b.float()
    scale = a.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rel * scale + 1e-7, f"{what}: max error {err:.3g} against scale {scale:.3g}"


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,fields,bias", CASES, ids=[c[0] for c in CASES])
def test_sparse_path_matches_the_dense_path(name, fields, bias, autocast):
    model = build(fields, bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, D_IN, generator=g)
    y = torch.randn(BATCH, model.d_out, generator=g) if model.has_target else None
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True  # AuxK's dead latents
    state = TrainingState(sparsity_scale=0.7, dead_mask=dead, step=3)
    dense, dense_grads, dense_buffers = run(model, "dense", x, y, state, autocast)
    sparse, sparse_grads, sparse_buffers = run(model, "sparse", x, y, state, autocast)
    assert sparse.fired is not None and dense.fired is None  # the sparse path really ran
    density = float((dense.z != 0).float().mean())
    assert 0 < density < 0.3
    rel = 3e-2 if autocast else 2e-5
    assert set(sparse.losses) == set(dense.losses)
    for term in dense.losses:
        close(dense.losses[term].detach(), sparse.losses[term].detach(), rel, f"loss {term}")
    close(dense.x_hat.detach(), sparse.x_hat.detach(), rel, "x_hat")
    close(dense.z.detach(), as_dense(sparse.z), rel, "z")
    assert torch.equal(sparse.fired, (dense.z.detach() > 0).any(0)) or autocast
    assert set(sparse_grads) == set(dense_grads)
    for param, grad in dense_grads.items():
        # bfloat16: the two paths round differently; gradients of near-zero sums are relative to the largest
        close(grad, sparse_grads[param], 6e-2 if autocast else 5e-5, f"grad {param}")
    for buffer, value in dense_buffers.items():
        close(value, sparse_buffers[buffer], rel, f"buffer {buffer}")


def test_decoder_and_encoder_functions_against_dense_products():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(20, 30, generator=g)
    pairs = Pairs.from_mask(pre > 1.0)
    W_dec = torch.randn(30, 7, generator=g, requires_grad=True)
    b_dec = torch.randn(7, generator=g, requires_grad=True)
    values = pairs.take(pre).clone().requires_grad_()
    x_hat = decode_pairs(values, W_dec, b_dec, pairs, torch.float32)
    dense_z = torch.zeros(20, 30)
    dense_z[pairs.rows, pairs.cols] = values.detach()
    dense_z.requires_grad_()
    W_ref, b_ref = W_dec.detach().clone().requires_grad_(), b_dec.detach().clone().requires_grad_()
    reference = dense_z @ W_ref + b_ref
    torch.testing.assert_close(x_hat, reference)
    grad = torch.randn(20, 7, generator=g)
    x_hat.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(values.grad, dense_z.grad[pairs.rows, pairs.cols])
    torch.testing.assert_close(W_dec.grad, W_ref.grad)
    torch.testing.assert_close(b_dec.grad, b_ref.grad)
    assert torch.equal(pairs.csr(values.detach()).to_dense(), dense_z.detach())


def test_encoder_at_pairs_gives_the_dense_encoder_gradients():
    model = build({"arch": "sae"}, -0.25)
    x = torch.randn(32, D_IN)
    pre_ref = model.pre_activation(x)
    pairs = Pairs.from_mask(pre_ref.detach() > 0)
    weights = torch.randn(pairs.nnz)
    (pre_ref[pairs.rows, pairs.cols] * weights).sum().backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        x_centred = x - model.b_dec
        pre = x_centred @ model.W_enc + model.b_enc
    (encode_at_pairs(model, x_centred, pre, pairs) * weights).sum().backward()
    for name in ("W_enc", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(model, name).grad, reference[name], rtol=1e-5, atol=1e-6)


def test_auto_takes_the_sparse_path_only_on_large_sparse_batches():
    model = build({"arch": "sae"}, 0.0)
    small = torch.randn(8, D_IN)
    assert not wants_sparse(model, small, 0.001)  # too small for the bookkeeping to pay
    model.kernels = "sparse"
    assert wants_sparse(model, small, 1.0)
    model.kernels = "dense"
    assert not wants_sparse(model, small, 0.0)
    model.kernels = "auto"
    big = torch.empty(math.ceil(MIN_SPARSE_ELEMENTS / D_SAE), D_IN)
    switch = switch_density(model, big)
    assert wants_sparse(model, big, switch) and not wants_sparse(model, big, 2 * switch)
    with torch.no_grad():
        assert not wants_sparse(model, big, 0.0)  # no gradients: nothing to gain


@pytest.mark.parametrize("bias,sparse", [(-3.0, True), (1.0, False)])
def test_auto_measures_the_density_of_the_batch(bias, sparse):
    """An L1 SAE on a batch large enough for 'auto': very negative b_enc (a sparse code) takes the
    sparse path, positive b_enc (a dense code) the dense one; both give the same loss."""
    model = build({"arch": "sae"}, bias)
    x = torch.randn(math.ceil(MIN_SPARSE_ELEMENTS / D_SAE), D_IN)
    out = model.training_loss(x, TrainingState())
    assert (out.fired is not None) == sparse
    model.kernels = "dense"
    torch.testing.assert_close(model.training_loss(x, TrainingState()).loss, out.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name,fields,bias", CASES, ids=[c[0] for c in CASES])
def test_sparse_path_matches_the_dense_path_on_cuda(name, fields, bias, autocast):
    """The same kernels on CUDA (embedding_bag, its per-sample-weight gradient, the stable sort)."""
    model = build(fields, bias).cuda()
    x = torch.randn(BATCH, D_IN, device="cuda")
    y = torch.randn(BATCH, model.d_out, device="cuda") if model.has_target else None
    dead = torch.zeros(D_SAE, dtype=torch.bool, device="cuda")
    dead[::3] = True
    state = TrainingState(sparsity_scale=0.7, dead_mask=dead, step=3)

    def go(kernels):
        model.kernels = kernels
        model.zero_grad(set_to_none=True)
        if "threshold" in model._buffers:
            model.threshold.fill_(-1.0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model.training_loss(x, state) if y is None else model.training_loss(x, state, target=y)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (dense, dense_grads), (sparse, sparse_grads) = go("dense"), go("sparse")
    assert sparse.fired is not None
    close(dense.loss.detach(), sparse.loss.detach(), 3e-2 if autocast else 1e-4, "loss")
    for param, grad in dense_grads.items():
        close(grad, sparse_grads[param], 6e-2 if autocast else 1e-4, f"grad {param}")
