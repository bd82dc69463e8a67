"""The compact text encodings of the site's data files (decoded by assets/site.js).

Every number and token of the examples is written with one alphabet of 91 printable ASCII
characters that need no escaping inside a JavaScript string ('#' to '~' without the backslash);
' ' separates examples and '!' separates groups of examples (top examples, then each band).

- **token codes**: tokens are numbered by how often they occur in the store (most frequent: rank
  0), and a rank is written as a self-delimiting base-91 code: digits 0–59 end a code, digits
  60–90 continue it, so the 60 most frequent tokens take 1 character, the next 1,860 take 2, the
  next 57,660 take 3 and the rest 4 (any vocabulary up to 1.8M). The text of each rank is listed
  once in SITE/data/vocab.js.
- **activations**: each window's non-zero activations as triples (column in the window, then a
  2-digit value v in [0, 8280]): a = (v − 4140) / 4140 · scale, where scale is the feature's largest
  |activation| in its windows; the error is at most scale / 8280 (0.012 % of the maximum).
  Zero activations are left out.
- **example positions**: per example its centre column (1 digit) and its context and position in
  the store as fixed-width base-91 integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ALPHABET = "".join(chr(c) for c in range(0x23, 0x7F) if chr(c) != "\\")
"""91 digit characters: '#' (0x23) to '~' (0x7E) without '\\'."""
BASE = len(ALPHABET)
TERMINAL = 60
"""Digits below this end a token code; the other BASE − TERMINAL digits continue it."""
CONTINUE = BASE - TERMINAL
ACT_ZERO = (BASE * BASE - 1) // 2
"""4140: the 2-digit activation code of 0; 0 and 2·ACT_ZERO stand for −scale and +scale."""
EXAMPLE_SEP, GROUP_SEP = " ", "!"
MAX_CODE_DIGITS = 4
_DIGITS = np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)
_OFFSETS = np.cumsum([0] + [CONTINUE**i * TERMINAL for i in range(MAX_CODE_DIGITS)])  # first rank of each length


def digits_needed(largest: int) -> int:
    """Fixed-width base-91 digits that hold every integer in [0, largest]."""
    width = 1
    while BASE**width <= largest:
        width += 1
    return width


def fixed_width(values: np.ndarray, width: int) -> np.ndarray:
    """Base-91 digit characters of non-negative integers, most significant first: [...] -> [..., width] uint8."""
    values = np.asarray(values, dtype=np.int64)
    out = np.empty(values.shape + (width,), dtype=np.uint8)
    for i in range(width - 1, -1, -1):
        out[..., i] = _DIGITS[values % BASE]
        values = values // BASE
    return out


def encode_int(value: int, width: int) -> str:
    return fixed_width(np.array(value), width).tobytes().decode("ascii")


@dataclass(frozen=True)
class TokenCodes:
    """The site's token numbering: rank of every token id and the code characters of every rank."""

    rank: np.ndarray
    """[V] int64 code rank of each token id (0: most frequent)."""
    token: np.ndarray
    """[V] int64 token id of each rank (the inverse permutation)."""
    code: np.ndarray
    """[V, 4] uint8 characters of each rank's code (left-aligned)."""
    length: np.ndarray
    """[V] int64 characters in each rank's code (1–4)."""

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray) -> TokenCodes:
        """Ranks by decreasing count (ties: smaller id first) for ids 0 … len(counts) − 1."""
        counts = np.asarray(counts, dtype=np.int64)
        if len(counts) > _OFFSETS[-1]:
            raise ValueError(f"vocabularies of more than {_OFFSETS[-1]:,} tokens are not supported")
        token = np.argsort(-counts, kind="stable")
        rank = np.empty_like(token)
        rank[token] = np.arange(len(token))
        code, length = code_table(len(token))
        return cls(rank=rank, token=token, code=code, length=length)

    def encode(self, ids) -> str:
        """The codes of token ids (a sequence; −1 entries are skipped), concatenated."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ranks = self.rank[ids[ids >= 0]]
        keep = np.arange(MAX_CODE_DIGITS) < self.length[ranks][:, None]
        return self.code[ranks][keep].tobytes().decode("ascii")


def code_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Characters [n, 4] (left-aligned) and lengths [n] of the codes of ranks 0 … n − 1."""
    ranks = np.arange(n, dtype=np.int64)
    length = np.searchsorted(_OFFSETS, ranks, side="right")  # 1 … 4
    rest = ranks - _OFFSETS[length - 1]
    code = np.zeros((n, MAX_CODE_DIGITS), dtype=np.uint8)
    last = rest % TERMINAL
    rest = rest // TERMINAL
    for L in range(1, MAX_CODE_DIGITS + 1):  # codes of length L: L − 1 continuation digits, then the terminal one
        sel = length == L
        r = rest[sel]
        digits = np.empty((sel.sum(), L), dtype=np.int64)
        digits[:, L - 1] = last[sel]
        for i in range(L - 2, -1, -1):
            digits[:, i] = TERMINAL + r % CONTINUE
            r = r // CONTINUE
        code[sel, :L] = _DIGITS[digits]
    return code, length


def activation_codes(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """2-digit codes of values [...] against scale [...] (broadcast): round(v / scale · 4140) + 4140."""
    q = torch.round(values.double() / scale.double().clamp_min(1e-30) * ACT_ZERO).clamp_(-ACT_ZERO, ACT_ZERO)
    return (q + ACT_ZERO).long()


def decode_activation(code: int, scale: float) -> float:
    return (code - ACT_ZERO) / ACT_ZERO * scale


# ----------------------------------------------------------------------------- example windows


def encode_windows(tokens: torch.Tensor, activations: torch.Tensor, scale: torch.Tensor, codes: TokenCodes,
                   before: int, contexts: torch.Tensor, positions: torch.Tensor, group: int,
                   context_width: int, position_width: int) -> tuple[list[str], list[str], list[str]]:
    """The examples of S features as three strings each: token codes, activation triples, positions.

    tokens [S, E, W] (−1: outside the context or empty slot), activations [S, E, W] (NaN there),
    scale [S], contexts / positions [S, E] (−1: empty slot); column `before` is the example
    token. Slots come in groups of `group` (top examples, then each band); in each string the
    examples of a group are separated by ' ' and the groups by '!'. Returns (tokens, activations,
    positions), one string per feature."""
    S, E, W = tokens.shape
    if W > BASE:
        raise ValueError(f"windows of more than {BASE} tokens cannot be encoded")
    present = (tokens >= 0).numpy()
    filled = (contexts >= 0).numpy()  # [S, E]
    first = np.where(present.any(-1), present.argmax(-1), 0)  # first column inside the context

    ranks = codes.rank[np.where(present, tokens.numpy(), 0)]
    token_bytes = codes.code[ranks].reshape(S, E, W * MAX_CODE_DIGITS)
    token_mask = ((np.arange(MAX_CODE_DIGITS) < codes.length[ranks][..., None]) & present[..., None]).reshape(S, E, -1)

    act = activation_codes(torch.nan_to_num(activations), scale[:, None, None]).numpy()
    column = np.arange(W) - first[..., None]
    act_bytes = np.stack([_DIGITS[np.clip(column, 0, BASE - 1)], _DIGITS[act // BASE], _DIGITS[act % BASE]], -1)
    act_mask = np.repeat((present & (act != ACT_ZERO))[..., None], 3, -1)

    meta_bytes = np.concatenate([_DIGITS[np.clip(before - first, 0, BASE - 1)][..., None],
                                 fixed_width(contexts.clamp(min=0).numpy(), context_width),
                                 fixed_width(positions.clamp(min=0).numpy(), position_width)], -1)
    meta_mask = np.repeat(filled[..., None], meta_bytes.shape[-1], -1)
    return (_join(token_bytes, token_mask, filled, group, True), _join(act_bytes.reshape(S, E, -1),
            act_mask.reshape(S, E, -1), filled, group, True), _join(meta_bytes, meta_mask, filled, group, False))


def _join(pieces: np.ndarray, mask: np.ndarray, filled: np.ndarray, group: int, separate: bool) -> list[str]:
    """Per feature: the masked bytes of its slots [S, E, P], ' ' after each filled slot (if
    `separate`) and '!' between groups of `group` slots."""
    S, E, _ = pieces.shape
    if separate:
        pieces = np.concatenate([pieces, np.full((S, E, 1), ord(EXAMPLE_SEP), np.uint8)], -1)
        mask = np.concatenate([mask, filled[..., None]], -1)
    G = E // group
    pieces = pieces.reshape(S, G, -1)
    mask = mask.reshape(S, G, -1)
    pieces = np.concatenate([pieces, np.full((S, G, 1), ord(GROUP_SEP), np.uint8)], -1).reshape(S, -1)
    mask = np.concatenate([mask, np.ones((S, G, 1), bool)], -1).reshape(S, -1)
    return [pieces[s][mask[s]].tobytes().decode("ascii")[:-1] for s in range(S)]


# ----------------------------------------------------------------------------- decoders (tests, tools)


def decode_token_codes(text: str) -> list[int]:
    """Ranks of a string of concatenated token codes (the inverse of `TokenCodes.encode`)."""
    ranks, value, length = [], 0, 0
    for ch in text:
        d = ALPHABET.index(ch)
        if d >= TERMINAL:
            value, length = value * CONTINUE + d - TERMINAL, length + 1
        else:
            ranks.append(int(_OFFSETS[length]) + value * TERMINAL + d)
            value, length = 0, 0
    return ranks


def decode_int(text: str) -> int:
    value = 0
    for ch in text:
        value = value * BASE + ALPHABET.index(ch)
    return value


def decode_examples(tokens: str, activations: str, meta: str, scale: float, context_width: int,
                    position_width: int) -> list[list[dict]]:
    """The groups of examples of one feature: [{"t": ranks, "a": values, "c", "ctx", "pos"}]."""
    width = 1 + context_width + position_width
    groups = []
    for tok_group, act_group, meta_group in zip(tokens.split(GROUP_SEP), activations.split(GROUP_SEP),
                                                meta.split(GROUP_SEP)):
        examples = []
        tok_list = [t for t in tok_group.split(EXAMPLE_SEP) if t]
        act_list = act_group.split(EXAMPLE_SEP)
        for j, tok in enumerate(tok_list):
            ranks = decode_token_codes(tok)
            values = [0.0] * len(ranks)
            triples = act_list[j]
            for i in range(0, len(triples), 3):
                values[ALPHABET.index(triples[i])] = decode_activation(
                    ALPHABET.index(triples[i + 1]) * BASE + ALPHABET.index(triples[i + 2]), scale)
            m = meta_group[j * width : (j + 1) * width]
            examples.append({"t": ranks, "a": values, "c": ALPHABET.index(m[0]),
                             "ctx": decode_int(m[1 : 1 + context_width]), "pos": decode_int(m[1 + context_width :])})
        groups.append(examples)
    return groups
