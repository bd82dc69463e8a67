"""The excerpts autointerp shows: a feature's examples from the analysis, split into those the
explainer sees and held-out ones for the scorer, and non-activating excerpts drawn from the store.

- Explanation: the first `explain_top` top examples and `explain_per_band` random samples of
  each interval band (Delphi's "mix" of top and quantile examples).
- Held out (activating): other band samples, `n_test` of them taken in turn from each band
  (highest first), none overlapping an explanation excerpt (same context, within one window).
- Non-activating: windows around random store tokens on which the feature is zero at every
  shown token (Delphi's random "not active" examples), re-encoded here to be sure.

Tokens are shown as the tokenizer renders them (`sae_kit.lm.tokens.display_tokens`: newlines
as ↵); special tokens such as BOS are left out of the text, and their activations with them.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch

from sae_kit.analysis.examples import ExampleWindows, example_windows
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.tokens import display_tokens


@dataclass(frozen=True)
class Excerpt:
    """A window of text with the feature's activation at each token."""

    tokens: list[str]
    """Display text of each token (special tokens left out)."""
    activations: list[float]
    """The feature's activation at each token."""
    position: int
    """Index in `tokens` of the example token (for random windows: the drawn token)."""
    center: int
    """Global token index (store row) of the example token."""
    context: int
    """Context index of the example in the store."""
    context_position: int
    """Position of the example token in its context."""
    group: str
    """'top', 'band Q' (interval band Q, 0 the lowest) or 'random' (a non-activating window)."""

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)

    def marked(self, threshold: float) -> list[bool]:
        """Tokens to highlight: activation > 0 and ≥ threshold × this excerpt's maximum (Delphi: 0.3)."""
        top = self.max_activation
        return [a > 0 and a >= threshold * top for a in self.activations]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["activations"] = [round(a, 4) for a in self.activations]
        return data


@dataclass(frozen=True)
class FeatureExcerpts:
    """Everything shown about one feature."""

    feature: int
    explain: list[Excerpt]
    """Shown to the explainer: top examples, then band samples."""
    test: list[Excerpt]
    """Held-out activating excerpts for the scorer."""
    negatives: list[Excerpt]
    """Non-activating excerpts (zero at every token), as many as `test` where the store allows."""


def overlaps(a: Excerpt, b: Excerpt, span: int) -> bool:
    """Whether two excerpts may share tokens: same context and example tokens ≤ span apart."""
    return a.context == b.context and abs(a.context_position - b.context_position) <= span


def split_examples(top: list[Excerpt], bands: list[list[Excerpt]], *, explain_top: int, explain_per_band: int,
                   n_test: int, span: int, rng: random.Random) -> tuple[list[Excerpt], list[Excerpt]]:
    """(explanation excerpts, held-out excerpts) from the top examples and each band's samples
    (bands[q] for band q, 0 the lowest). See the module docstring for the rule."""
    pools = [rng.sample(band, len(band)) for band in bands]
    explain = list(top[:explain_top])
    for pool in pools:
        explain += pool[:explain_per_band]
    left = [[e for e in pool[explain_per_band:] if not any(overlaps(e, x, span) for x in explain)]
            for pool in reversed(pools)]  # highest band first
    test: list[Excerpt] = []
    while len(test) < n_test and any(left):
        for pool in left:
            if pool and len(test) < n_test:
                test.append(pool.pop(0))
    return explain, test


def _excerpt(ids: torch.Tensor, acts: torch.Tensor, column: int, center: int, context: int, position: int,
             group: str, names: dict[int, str], special: set[int]) -> Excerpt | None:
    """An Excerpt from one window row (ids [W] with −1 outside, acts [W]); None if its example token is hidden."""
    keep = [j for j in range(len(ids)) if ids[j] >= 0 and int(ids[j]) not in special]
    if column not in keep:
        return None
    return Excerpt(tokens=[names[int(ids[j])] for j in keep],
                   activations=[max(0.0, float(acts[j])) for j in keep],
                   position=keep.index(column), center=center, context=context,
                   context_position=position, group=group)


def window_excerpts(windows: ExampleWindows, row: int, names: dict[int, str], special: set[int]
                    ) -> tuple[list[Excerpt], list[list[Excerpt]]]:
    """(top excerpts, excerpts of each band) of row `row` of `windows`, empty slots skipped."""
    k = windows.top_k
    n_groups = windows.centers.shape[1] // k
    groups: list[list[Excerpt]] = []
    for g in range(n_groups):
        found = []
        for slot in range(g * k, (g + 1) * k):
            center = int(windows.centers[row, slot])
            if center < 0:
                continue
            excerpt = _excerpt(windows.tokens[row, slot], windows.activations[row, slot], windows.before, center,
                               int(windows.contexts[row, slot]), int(windows.positions[row, slot]),
                               "top" if g == 0 else f"band {g - 1}", names, special)
            if excerpt is not None:
                found.append(excerpt)
        groups.append(found)
    return groups[0], groups[1:]


@dataclass(frozen=True)
class RandomWindows:
    """Windows around N random store tokens, gathered once and re-encoded for any features.
    W = before + 1 + after; m = the window tokens inside their example's context."""

    centers: torch.Tensor
    """[N] int64 global index of each drawn token."""
    contexts: torch.Tensor
    """[N] int64 its context."""
    positions: torch.Tensor
    """[N] int64 its position in the context."""
    tokens: torch.Tensor
    """[N, W] int64 token ids (−1 outside the context)."""
    where: tuple[torch.Tensor, torch.Tensor]
    """Window slots (row, column) of the m tokens inside the context."""
    acts: torch.Tensor
    """[m, d_in] their stored activations."""
    before: int

    @torch.no_grad()
    def activations(self, autoencoder, features: list[int]) -> torch.Tensor:
        """[S, N, W] activations of `features` on every window token (NaN outside the context)."""
        param = next(autoencoder.parameters(), torch.empty(0))
        encode = autoencoder.subset_encoder(torch.as_tensor(features, dtype=torch.long, device=param.device))
        x = self.acts.to(param.device, param.dtype if param.is_floating_point() else torch.float32)
        z = (torch.cat([encode(x[i : i + 4096]).float().cpu() for i in range(0, x.shape[0], 4096)]) if x.shape[0]
             else torch.zeros(0, len(features)))
        out = torch.full((len(features), *self.tokens.shape), float("nan"))
        out[:, self.where[0], self.where[1]] = z.T
        return out


def random_windows(store: ActivationStore, hook: str, n: int, before: int, after: int, seed: int) -> RandomWindows:
    """Windows around n random store tokens (drawn with replacement, duplicates dropped), cut at
    their context's edges; reading the store once for all features."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randint(0, store.n_tokens, (n,), generator=generator).unique()
    meta = store.gather(None, centers)
    window = centers[:, None] + torch.arange(-before, after + 1)  # [N, W]
    inside = (window >= 0) & (window < store.n_tokens)
    where = inside.nonzero(as_tuple=True)
    rows = store.gather(hook, window[where])
    same = rows["context"] == meta["context"][where[0]]
    where = (where[0][same], where[1][same])
    tokens = torch.full(window.shape, -1, dtype=torch.long)
    tokens[where] = rows["tokens"][same]
    return RandomWindows(centers=centers, contexts=meta["context"], positions=meta["position"], tokens=tokens,
                         where=where, acts=rows["acts"][same], before=before)


def negative_excerpts(drawn: RandomWindows, activations: torch.Tensor, names: dict[int, str],
                      special: set[int]) -> list[Excerpt]:
    """The drawn windows on which a feature (activations [N, W]) is zero at every shown token."""
    out = []
    for i in range(drawn.centers.shape[0]):
        excerpt = _excerpt(drawn.tokens[i], activations[i], drawn.before, int(drawn.centers[i]),
                           int(drawn.contexts[i]), int(drawn.positions[i]), "random", names, special)
        if excerpt is not None and len(excerpt.tokens) > 1 and excerpt.max_activation <= 0:
            out.append(excerpt)
    return out


def collect_excerpts(analysis, features: list[int], *, autoencoder, store: ActivationStore, tokenizer,
                     drawn: RandomWindows, after: int, explain_top: int, explain_per_band: int, n_test: int,
                     seed: int) -> list[FeatureExcerpts]:
    """The explanation, held-out and non-activating excerpts of each feature (module docstring);
    `drawn` (`random_windows`) holds the candidate non-activating windows, `drawn.before` tokens
    before each example token."""
    before = drawn.before
    windows = example_windows(analysis, features, autoencoder=autoencoder, store=store, before=before, after=after)
    negative_acts = drawn.activations(autoencoder, features)  # [S, N, W]
    ids = torch.cat([windows.tokens.reshape(-1), drawn.tokens.reshape(-1)])
    names = display_tokens(tokenizer, ids[ids >= 0].unique().tolist())
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    span = before + after
    out = []
    for row, feature in enumerate(features):
        rng = random.Random(seed * 1_000_003 + feature)
        top, bands = window_excerpts(windows, row, names, special)
        explain, test = split_examples(top, bands, explain_top=explain_top, explain_per_band=explain_per_band,
                                       n_test=n_test, span=span, rng=rng)
        negatives = negative_excerpts(drawn, negative_acts[row], names, special)
        negatives = rng.sample(negatives, min(len(test), len(negatives)))
        out.append(FeatureExcerpts(feature=feature, explain=explain, test=test, negatives=negatives))
    return out


def random_marks(excerpt: Excerpt, count: int, threshold: float, rng: random.Random) -> list[bool] | None:
    """Marks on `count` random tokens that are *not* highlighted by `marked(threshold)` (a wrong
    highlighting for fuzzing); None if the excerpt has no such token."""
    correct = excerpt.marked(threshold) if excerpt.max_activation > 0 else [False] * len(excerpt.tokens)
    wrong = [j for j, mark in enumerate(correct) if not mark]
    if not wrong:
        return None
    chosen = set(rng.sample(wrong, min(count, len(wrong))))
    return [j in chosen for j in range(len(excerpt.tokens))]


def wrong_mark_count(test: list[Excerpt], threshold: float) -> int:
    """How many tokens a wrong highlighting marks: the mean number of correctly marked tokens of
    the held-out excerpts, rounded up (Delphi's fuzzing rule), at least 1."""
    if not test:
        return 1
    return max(1, math.ceil(sum(sum(e.marked(threshold)) for e in test) / len(test)))
