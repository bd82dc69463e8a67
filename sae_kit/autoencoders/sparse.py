"""Sparse paths: the encoder's backward and the decoder through the active (token, latent) pairs.

Of the five matrix products of a dense training step (pre = x W_enc, x̂ = z W_dec, ∂z, ∂W_dec,
∂W_enc) only the encoder's forward product is inherently dense. Once the code is sparse (L0 ≈ 60
of 4,608 latents: 99 % zeros) the other four touch only the nnz = B·L0 active pairs (b, i):

    x̂_b        = Σ_{i: (b,i) active} z_bi W_dec,i + b_dec        B·L0·d   (a weighted bag of rows)
    ∂z_bi       = ∂x̂_b · W_dec,i          only at active pairs      nnz·d    (a sampled product, SDDMM)
    ∂W_dec,i    = Σ_{b: (b,i) active} z_bi ∂x̂_b                     nnz·d    (a bag of rows of ∂x̂)
    ∂W_enc[:,i] = Σ_{b: (b,i) active} ∂pre_bi (x_b − b_dec)          nnz·d    (a bag of rows of x − b_dec)
    ∂b_enc,i    = Σ_b ∂pre_bi,   ∂b_dec (encoder side) = −W_enc ∂b_enc

against B·d_sae·d for each dense product. Two autograd Functions hold this, shared by every
sparse architecture: `EncoderAtPairs` (pre at the pairs, from a dense pre computed without
autograd, with the sparse ∂W_enc, ∂b_enc, ∂b_dec) and `DecoderFromPairs` (x̂ from the pairs'
values, with ∂values, ∂W_dec, ∂b_dec). What is active is each architecture's choice (`Pairs`:
ReLU's positives, TopK's indices, BatchTopK's cut, JumpReLU's θ − ε/2 window, the gate), and the
activation and sparsity terms then run on the [nnz] values with plain autograd. The kernels are
`torch.nn.functional.embedding_bag` (weighted bags of rows, in row order for x̂ and in column
order for the weight gradients) and `torch.sparse.sampled_addmm` for ∂z (CPU and CUDA alike).

Dense or sparse is the model's `kernels` attribute ('auto' | 'sparse' | 'dense', set by the
trainer from TrainConfig.kernels): 'auto' takes the sparse path when the density of the code is
at most `SWITCH_DENSITY` (by dense-path kind and dtype) and the batch has at least
`MIN_SPARSE_ELEMENTS` entries of pre. The
decision depends only on the batch and the weights (never on earlier steps), so exact resume
holds either way.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from sae_kit.autoencoders.base import ForwardOutput
from sae_kit.autoencoders.losses import normalized_mse, reconstruction_loss

SWITCH_DENSITY = {("fused", torch.float32): 0.04, ("fused", torch.bfloat16): 0.0025,
                  ("autograd", torch.float32): 0.06, ("autograd", torch.bfloat16): 0.02}
"""'auto' takes the sparse path at or below this fraction of active pairs (nnz / (B·d_sae)), by the
kind of dense path it replaces (the L1 SAE's fused backward, or plain autograd: every other
architecture) and the compute dtype.

Measured on 2 CPU cores (AMD EPYC Zen 4, under load from other jobs), d_in 576 × 4,608, batch
4,096, one training step (loss + backward) on each path at densities 0.25 % … 20 %, interleaved:
    PYTHONPATH=$PWD python scripts/bench/sparse_switch.py
Crossovers measured (the largest density where sparse was faster): L1 SAE against its fused
dense backward 0.04 in float32, none in bfloat16 down to 0.0025 in that run (0.0025 in an earlier
one); TopK against autograd 0.06 in float32, 0.02 in bfloat16. The fused dense L1 step is hard to
beat in bfloat16, whose matrix products run ~5× faster than in float32 on this CPU while the
sparse path's passes over [B, d_sae] (the mask compare, nonzero) do not get faster."""

MIN_SPARSE_ELEMENTS = 1 << 20
"""'auto' stays dense below this many entries of pre (B·d_sae): on small batches the index
bookkeeping costs more than the products it saves."""

DENSITY_SAMPLE_ROWS = 256
"""Rows of pre whose density decides 'auto' for the models whose L0 is not fixed (L1, JumpReLU, Gated)."""


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype products run in: autocast's (bfloat16) when it is on for x's device, else x's."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype


class Pairs:
    """The active (token, latent) pairs of a batch pre [B, d_sae], sorted by token.

    rows, cols [nnz] int64 (rows non-decreasing); offsets [B]: where each token's pairs start
    (embedding_bag's bags); `by_col`/`col_offsets`: the same pairs in latent order (computed once,
    on first use, for the weight gradients)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int,
                 flat: torch.Tensor | None = None):
        self.rows, self.cols, self.n_rows, self.n_cols = rows, cols, n_rows, n_cols
        self.flat = rows * n_cols + cols if flat is None else flat  # index into pre.reshape(-1)
        self.offsets = _starts(rows, n_rows)
        self._by_col: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Pairs":
        """Pairs where mask [B, d_sae] (bool) is True."""
        n_rows, n_cols = mask.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)
        return cls(flat // n_cols, flat % n_cols, n_rows, n_cols, flat)

    @classmethod
    def from_indices(cls, indices: torch.Tensor, n_cols: int) -> "Pairs":
        """Pairs (b, indices[b, j]) for indices [B, k] (TopK's choice: k pairs per token)."""
        n_rows, k = indices.shape
        rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
        return cls(rows, indices.reshape(-1), n_rows, n_cols)

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @property
    def density(self) -> float:
        """nnz / (B·d_sae)."""
        return self.nnz / max(1, self.n_rows * self.n_cols)

    def take(self, pre: torch.Tensor) -> torch.Tensor:
        """pre [B, d_sae] at the pairs: [nnz] (index_select: several times faster than t[idx] on CPU)."""
        return pre.reshape(-1).index_select(0, self.flat)

    def at(self, per_latent: torch.Tensor) -> torch.Tensor:
        """A per-latent vector [d_sae] at the pairs' latents: [nnz] (with autograd)."""
        return per_latent.index_select(0, self.cols)

    def select(self, keep: torch.Tensor) -> "Pairs":
        """The pairs where keep [nnz] (bool) is True (still in token order)."""
        return Pairs(self.rows[keep], self.cols[keep], self.n_rows, self.n_cols, self.flat[keep])

    def by_col(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(order [nnz], col_offsets [d_sae]): order sorts the pairs by latent, col_offsets where
        each latent's pairs start in that order. A stable sort of int32 keys: on CPU that is a radix
        sort, ~30× faster here than the unstable sort (measured: 3 ms against 96 ms for 241k pairs)."""
        if self._by_col is None:
            order = torch.sort(self.cols.int(), stable=True).indices
            self._by_col = (order, _starts(self.cols.index_select(0, order), self.n_cols))
        return self._by_col

    def fired(self, values: torch.Tensor) -> torch.Tensor:
        """[d_sae] bool: latents with a positive value at some pair (the dead-latent tracker's input)."""
        fired = torch.zeros(self.n_cols, dtype=torch.bool, device=self.cols.device)
        return fired.index_fill_(0, self.cols.masked_select(values > 0), True)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The [B, d_sae] sparse CSR tensor with `values` [nnz] at the pairs."""
        crow = torch.cat([self.offsets, self.offsets.new_tensor([self.nnz])])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": said once per process is enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, self.cols, values, (self.n_rows, self.n_cols))


def _starts(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """[n] start of each id's run in the non-decreasing sorted_ids."""
    counts = torch.bincount(sorted_ids, minlength=n)
    return torch.cumsum(counts, 0) - counts


def bag_by_col(pairs: Pairs, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[d_sae, m]: row i = Σ_{b: (b,i) active} weights_bi table_b, for table [B, m], weights [nnz]
    (the transposed sparse product Sᵀ table with S = the pairs' values)."""
    order, col_offsets = pairs.by_col()
    return F.embedding_bag(pairs.rows.index_select(0, order), table, col_offsets,
                           per_sample_weights=weights.index_select(0, order).to(table.dtype), mode="sum")


def sampled_dot(pairs: Pairs, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[nnz]: left_b · right_i at each pair (b, i), for left [B, m], right [d_sae, m] (SDDMM).

    embedding_bag's own gradient for its per-sample weights computes exactly this (in any dtype,
    ~20 % faster than torch.sparse.sampled_addmm here, which also lacks bfloat16 on CPU); the
    public sampled_addmm is the fallback where that internal operator is missing."""
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is not None:
        return op(left, right, pairs.cols, pairs.offsets, pairs.rows, 0, -1)  # mode 0: sum
    pattern = pairs.csr(torch.zeros(pairs.nnz, dtype=torch.float32, device=left.device))
    return torch.sparse.sampled_addmm(pattern, left.float(), right.float().T, beta=0.0).values()


class EncoderAtPairs(torch.autograd.Function):
    """pre at the pairs [nnz], with the gradients of pre = (x − b_dec) W_enc + b_enc computed from
    the sparse ∂L/∂pre: ∂W_enc [d_in, d_sae], ∂b_enc [d_sae], ∂b_dec [d_in] (x needs no gradient)."""

    @staticmethod
    def forward(ctx, values, x_centred, W_enc, b_enc, b_dec, pairs: Pairs):
        ctx.save_for_backward(x_centred, W_enc)
        ctx.pairs, ctx.has_b_dec = pairs, b_dec is not None
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_centred, W_enc = ctx.saved_tensors
        pairs = ctx.pairs
        d_W_enc = bag_by_col(pairs, x_centred, grad).T.float()  # [d_in, d_sae]
        d_b_enc = torch.zeros(pairs.n_cols, dtype=torch.float32, device=grad.device).index_add_(0, pairs.cols, grad.float())
        d_b_dec = -(W_enc.detach().float() @ d_b_enc) if ctx.has_b_dec else None
        return None, None, d_W_enc.to(W_enc.dtype), d_b_enc.to(W_enc.dtype), d_b_dec, None


class DecoderFromPairs(torch.autograd.Function):
    """x̂ = Σ_pairs values W_dec,i (+ b_dec): [B, d_out] float32, products in `dtype`; gradients
    ∂values [nnz] (∂x̂_b · W_dec,i at the pairs only), ∂W_dec [d_sae, d_out], ∂b_dec."""

    @staticmethod
    def forward(ctx, values, W_dec, b_dec, pairs: Pairs, dtype: torch.dtype):
        W_c, v_c = W_dec.detach().to(dtype), values.detach().to(dtype)
        x_hat = F.embedding_bag(pairs.cols, W_c, pairs.offsets, per_sample_weights=v_c, mode="sum").float()
        if b_dec is not None:
            x_hat = x_hat + b_dec.detach().float()
        ctx.save_for_backward(v_c, W_c)
        ctx.pairs, ctx.has_b_dec, ctx.values_dtype = pairs, b_dec is not None, values.dtype
        return x_hat

    @staticmethod
    def backward(ctx, grad):
        v_c, W_c = ctx.saved_tensors
        pairs = ctx.pairs
        g_c = grad.to(W_c.dtype).contiguous()
        d_values = d_W_dec = None
        if ctx.needs_input_grad[0]:  # ∂z_bi = ∂x̂_b · W_dec,i at the pairs (a sampled dense product)
            d_values = sampled_dot(pairs, g_c, W_c).to(ctx.values_dtype)
        if ctx.needs_input_grad[1]:
            d_W_dec = bag_by_col(pairs, g_c, v_c).float()
        d_b_dec = grad.sum(0) if ctx.has_b_dec and ctx.needs_input_grad[2] else None
        return d_values, d_W_dec, d_b_dec, None, None


def centred_input(model, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x − b_dec (x for a transcoder) in `dtype`, without autograd: [B, d_in]."""
    with torch.no_grad():
        return (x - model.b_dec if model.apply_b_dec_to_input else x).to(dtype)


def dense_pre(model, x_centred: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """pre = x_centred W_enc + b_enc [B, d_sae] in x_centred's dtype, without autograd (the one
    dense product of a sparse step); bias False leaves b_enc out (u = x_centred W_enc)."""
    with torch.no_grad():
        dtype = x_centred.dtype
        if not bias:
            return x_centred @ model.W_enc.to(dtype)
        return torch.addmm(model.b_enc.to(dtype), x_centred, model.W_enc.to(dtype))


def separable_pre(model, x_centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
    """(p, offset) with pre = p + offset, for the models whose pairs follow from pre alone (ReLU,
    JumpReLU): in float32 p = x_centred W_enc and offset = b_enc (a bias addmm would first copy
    b_enc into all of [B, d_sae]: one pass saved), in a lower precision p = pre itself (offset 0),
    rounded as the dense path rounds it, so that both paths keep the same pairs."""
    if x_centred.dtype == torch.float32:
        return dense_pre(model, x_centred, bias=False), model.b_enc.detach()
    return dense_pre(model, x_centred), 0.0


def encode_at_pairs(model, x_centred: torch.Tensor, pre: torch.Tensor, pairs: Pairs,
                    bias_added: bool = True) -> torch.Tensor:
    """pre at the pairs [nnz] (float32), carrying the sparse encoder gradients to the model's
    W_enc, b_enc and (autoencoders) b_dec. `bias_added` False: `pre` is u = x_centred W_enc, and
    b_enc is added here in float32 (as a dense path that adds it to u outside autocast does)."""
    b_dec = model.b_dec if model.apply_b_dec_to_input else None
    values = pairs.take(pre).float()
    if not bias_added:
        values = values + pairs.at(model.b_enc.detach().float())
    with torch.autocast(x_centred.device.type, enabled=False):
        return EncoderAtPairs.apply(values, x_centred, model.W_enc, model.b_enc, b_dec, pairs)


def decode_pairs(values: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None, pairs: Pairs,
                 dtype: torch.dtype) -> torch.Tensor:
    """x̂ [B, d_out] float32 from the pairs' values [nnz] (`DecoderFromPairs`); b_dec None adds no bias."""
    with torch.autocast(values.device.type, enabled=False):
        return DecoderFromPairs.apply(values, W_dec, b_dec, pairs, dtype)


def wants_sparse(model, x: torch.Tensor, density) -> bool:
    """Whether the model's training loss takes the sparse path on this batch x [B, d_in]:
    model.kernels 'sparse' always (with gradients on and a 2-D batch), 'dense' never, 'auto' when
    the batch is large enough (`MIN_SPARSE_ELEMENTS`) and the code's density is at most
    `switch_density`. `density`: the fraction of active pairs when it is fixed (TopK's k / d_sae),
    or, for a model whose density is known only from pre (L1, JumpReLU, Gated), the function
    pre -> bool mask of the pairs it would keep, applied to a sample of the batch
    (`sampled_density`)."""
    mode = getattr(model, "kernels", "auto")
    if mode == "dense" or x.dim() != 2 or not torch.is_grad_enabled():
        return False
    if mode == "sparse":
        return True
    if x.shape[0] * model.d_sae < MIN_SPARSE_ELEMENTS:
        return False
    if callable(density):
        density = sampled_density(model, x, density)
    return density <= switch_density(model, x)


def switch_density(model, x: torch.Tensor) -> float:
    """`SWITCH_DENSITY` for this model (fused dense path or autograd) and x's compute dtype."""
    kind = "fused" if getattr(model, "fused", False) else "autograd"
    dtype = torch.float32 if compute_dtype(x) == torch.float32 else torch.bfloat16
    return SWITCH_DENSITY[(kind, dtype)]


def as_dense(z: torch.Tensor) -> torch.Tensor:
    """z as a strided tensor (a sparse path returns its latents as sparse CSR)."""
    return z.to_dense() if z.layout != torch.strided else z


def sampled_density(model, x: torch.Tensor, active) -> float:
    """The density of the pairs `active` (pre -> bool mask) keeps on pre of the batch's first
    `DENSITY_SAMPLE_ROWS` tokens (a 1/16 slice of the encoder product at batch 4096)."""
    sample = x[:DENSITY_SAMPLE_ROWS]
    pre = dense_pre(model, centred_input(model, sample, compute_dtype(sample)))
    return float(active(pre).float().mean())


def sparse_output(pairs: Pairs, x_hat: torch.Tensor, z_values: torch.Tensor, terms: dict):
    """The ForwardOutput of a sparse path: z as sparse CSR [B, d_sae] (detached), `fired` from the pairs."""
    z = pairs.csr(z_values.detach())
    return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()), fired=pairs.fired(z_values.detach()))


# -- the training losses shared by several architectures ----------------------------------------


def sparse_relu_l1(model, x: torch.Tensor, y: torch.Tensor, lam: float, skip: torch.Tensor | None = None):
    """The ReLU + decoder-norm-weighted L1 loss (arch sae; ReLU transcoders, which pass their
    target y and skip term) on the sparse path: x [B, d_in], y [B, d_out] ->
    ForwardOutput with losses {'reconstruction', 'l1'} (the formulas of `sae_kit.autoencoders.sae`)."""
    dtype = compute_dtype(x)
    x_centred = centred_input(model, x, dtype)
    p, offset = separable_pre(model, x_centred)
    pairs = Pairs.from_mask(p > -offset)
    z = encode_at_pairs(model, x_centred, p, pairs, bias_added=not torch.is_tensor(offset))  # all > 0: ReLU = identity
    y_hat = decode_pairs(z, model.W_dec, model.b_dec, pairs, dtype)
    if skip is not None:
        y_hat = y_hat + skip
    norms = model.W_dec.norm(dim=-1)
    terms = {"reconstruction": reconstruction_loss(y, y_hat), "l1": lam * (z * pairs.at(norms)).sum() / x.shape[0]}
    return sparse_output(pairs, y_hat, z, terms)


def sparse_topk(model, x: torch.Tensor, y: torch.Tensor, state, skip: torch.Tensor | None = None):
    """The TopK + AuxK loss (arch topk; TopK transcoders) on the sparse path: k pairs per token
    from pre's top k, AuxK's k_aux dead latents per token from the same pre. -> ForwardOutput
    with losses {'reconstruction'} (+ 'auxk')."""
    cfg = model.cfg
    dtype = compute_dtype(x)
    x_centred = centred_input(model, x, dtype)
    pre = dense_pre(model, x_centred)
    pairs = Pairs.from_indices(pre.topk(cfg.k, dim=-1, sorted=False).indices, model.d_sae)
    z = F.relu(encode_at_pairs(model, x_centred, pre, pairs))
    y_hat = decode_pairs(z, model.W_dec, model.b_dec, pairs, dtype)
    if skip is not None:
        y_hat = y_hat + skip
    terms = {"reconstruction": reconstruction_loss(y, y_hat)}
    aux = sparse_auxk(model, x_centred, pre, y - y_hat, state.dead_mask)
    if aux is not None:
        terms["auxk"] = aux
    return sparse_output(pairs, y_hat, z, terms)


def sparse_auxk(model, x_centred: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor,
                dead_mask: torch.Tensor | None) -> torch.Tensor | None:
    """α · AuxK (Gao et al. 2024; `sae_kit.autoencoders.losses.auxk_loss`) on the sparse path: the
    top min(k_aux, n_dead) dead latents of each token, their encoder and decoder gradients through
    their pairs only. None when nothing is dead or α = 0 (as `auxk_term`)."""
    cfg = model.cfg
    if dead_mask is None or cfg.auxk_coefficient <= 0 or not bool(dead_mask.any()):
        return None
    k = min(cfg.k_aux, int(dead_mask.sum()))
    with torch.no_grad():
        indices = pre.masked_fill(~dead_mask, float("-inf")).topk(k, dim=-1, sorted=False).indices
    pairs = Pairs.from_indices(indices, model.d_sae)
    values = F.relu(encode_at_pairs(model, x_centred, pre, pairs))
    e_hat = decode_pairs(values, model.W_dec, None, pairs, x_centred.dtype)
    return cfg.auxk_coefficient * normalized_mse(residual.detach(), e_hat)
