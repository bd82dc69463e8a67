"""The compact codes of the site's data files, round-tripped, and the feature map's PCA against an SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_kit.dashboard.encoding import (
    ACT_ZERO,
    ALPHABET,
    BASE,
    TokenCodes,
    activation_codes,
    code_table,
    decode_activation,
    decode_examples,
    decode_int,
    decode_token_codes,
    digits_needed,
    encode_int,
    encode_windows,
)
from sae_kit.dashboard.featuremap import GRID, map_columns, pca_2d


def test_alphabet_needs_no_escaping():
    assert len(ALPHABET) == BASE == 91 and len(set(ALPHABET)) == 91
    assert not set(ALPHABET) & set(" !\"\\") and all(0x23 <= ord(c) <= 0x7E for c in ALPHABET)


def test_token_codes_round_trip_at_every_length():
    code, length = code_table(70_000)
    # 60 one-digit codes, 31 · 60 two-digit, 31² · 60 three-digit, then four digits
    assert length[[0, 59, 60, 1919, 1920, 59579, 59580, 69999]].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert code[0, :1].tobytes() == b"#" and code[60, :2].tobytes() == ALPHABET[60].encode() + b"#"
    rng = np.random.default_rng(0)
    codes = TokenCodes.from_counts(rng.integers(0, 1000, 70_000))
    ids = np.concatenate([rng.integers(0, 70_000, 3000), [-1, 5, -1]])
    text = codes.encode(ids)
    assert codes.token[decode_token_codes(text)].tolist() == ids[ids >= 0].tolist()
    frequent = TokenCodes.from_counts(np.array([5, 9, 9, 0, 7]))
    assert frequent.token.tolist() == [1, 2, 4, 0, 3] and frequent.rank.tolist() == [3, 0, 1, 4, 2]  # ties: smaller id


def test_fixed_width_integers_and_activation_codes():
    assert digits_needed(0) == 1 and digits_needed(90) == 1 and digits_needed(91) == 2 and digits_needed(8281) == 3
    for value, width in [(0, 1), (90, 1), (91, 2), (123_456, 3), (753_570, 3)]:
        assert decode_int(encode_int(value, width)) == value and len(encode_int(value, width)) == width
    scale = torch.tensor(2.5)
    values = torch.linspace(-2.5, 2.5, 1001)
    codes = activation_codes(values, scale)
    assert codes.min() == 0 and codes.max() == 2 * ACT_ZERO and int(activation_codes(torch.tensor(0.0), scale)) == ACT_ZERO
    back = torch.tensor([decode_activation(int(c), 2.5) for c in codes])
    assert (back - values).abs().max() <= 2.5 / (2 * ACT_ZERO) + 1e-9  # half a step
    assert int(activation_codes(torch.tensor(9.0), scale)) == 2 * ACT_ZERO  # clamped to the scale


def test_windows_round_trip_with_edges_and_empty_slots():
    # 2 features, groups of 2 slots (top, one band), windows of 4 tokens with the example at column 2
    tokens = torch.tensor([[[5, 6, 7, -1], [-1, 8, 9, 10], [11, 12, 13, 14], [-1, -1, -1, -1]],
                           [[-1, -1, 3, 4], [-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]]])
    nan = float("nan")
    acts = torch.tensor([[[0.0, 1.0, 2.0, nan], [nan, 0.0, -0.5, 0.25], [0.1, 0.0, 1.5, 0.0], [nan] * 4],
                         [[nan, nan, 4.0, 0.0], [nan] * 4, [nan] * 4, [nan] * 4]])
    contexts = torch.tensor([[3, 100, 7, -1], [8000, -1, -1, -1]])
    positions = torch.tensor([[2, 1, 30, -1], [0, -1, -1, -1]])
    codes = TokenCodes.from_counts(np.arange(20)[::-1].copy())  # id i has rank i
    scale = torch.tensor([2.0, 4.0])
    tok, act, where = encode_windows(tokens, acts, scale, codes, 2, contexts, positions, 2, 2, 1)
    groups = [decode_examples(t, a, w, float(s), 2, 1) for t, a, w, s in zip(tok, act, where, scale)]
    first, second = groups
    assert [[ex["t"] for ex in g] for g in first] == [[[5, 6, 7], [8, 9, 10]], [[11, 12, 13, 14]]]
    assert [[(ex["c"], ex["ctx"], ex["pos"]) for ex in g] for g in first] == [[(2, 3, 2), (1, 100, 1)], [(2, 7, 30)]]
    assert first[0][1]["a"] == pytest.approx([0.0, -0.5, 0.25], abs=2.0 / ACT_ZERO)
    assert first[1][0]["a"] == pytest.approx([0.1, 0.0, 1.5, 0.0], abs=2.0 / ACT_ZERO)
    assert second == [[{"t": [3, 4], "a": pytest.approx([4.0, 0.0]), "c": 0, "ctx": 8000, "pos": 0}], []]
    assert tok[1] == codes.encode([3, 4]) + " !"  # one example, then the empty band's empty group


def test_pca_matches_an_svd_of_the_unit_rows():
    torch.manual_seed(0)
    W = torch.randn(400, 10) @ torch.diag(torch.tensor([5.0, 3.0] + [0.5] * 8))  # two dominant directions
    W[::7] *= 4  # row norms do not matter: directions are projected
    coords = pca_2d(W, block=64)
    unit = W / W.norm(dim=1, keepdim=True)
    centred = (unit - unit.mean(0)).double()
    _, _, Vh = torch.linalg.svd(centred, full_matrices=False)
    plain = centred @ Vh[:2].T
    for axis in range(2):  # equal up to the sign of each axis
        sign = torch.sign((coords[:, axis] * plain[:, axis]).sum())
        assert torch.allclose(coords[:, axis], sign * plain[:, axis], atol=1e-8)
    assert torch.allclose(pca_2d(W, block=400), coords, atol=1e-12)  # blocks change nothing
    cols = map_columns(coords)
    x = cols["x0"] + torch.tensor(cols["x"], dtype=torch.float64) * cols["dx"]
    assert min(cols["x"]) == 0 and max(cols["x"]) == GRID - 1
    assert (x - coords[:, 0]).abs().max() <= cols["dx"] / 2 + 1e-12
