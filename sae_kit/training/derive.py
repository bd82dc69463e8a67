"""The settings a user leaves open, derived from the size of the run (`resolve`): training
tokens, batch size, lr and b_dec's initialisation. Each rule states its source or measurement;
`resolve` returns what it derived so the run prints it at start and saves it in config.json.
Runs of 10⁸+ tokens get the published recipe (Anthropic, April 2024) unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sae_kit.training.recipe import TrainConfig

RECIPE_TOKENS = 100_000_000
"""From 10⁸ training tokens on, the April 2024 recipe applies unchanged (batch 4096, lr 5e-5)."""
RECIPE_BATCH = 4096
RECIPE_LR = 5e-5
RECIPE_STEPS = RECIPE_TOKENS // RECIPE_BATCH
"""24,414 steps: the shortest run the recipe's lr is used for."""
SHORT_RUN = (977, 5e-4)
"""(steps, lr) of the measured short-run anchor: 1M tokens of the default store at batch 1024 and
lr 5e-4 reach held-out FVU 0.154 at L0 68 with 0.1 % dead latents (the committed demo report)."""
LR_EXPONENT = math.log(RECIPE_LR / SHORT_RUN[1]) / math.log(SHORT_RUN[0] / RECIPE_STEPS)
"""≈ 0.716: lr ∝ steps^−0.716, the power law through the recipe's point and the short-run anchor."""
MIN_DEFAULT_TOKENS = 1_000_000
"""Default training tokens for a small store (passed over several times): the short-run anchor."""
STEPS_PER_BATCH_RULE = 1000
"""The derived batch is the power of two nearest to tokens / 1000, in [256, 4096]: about a
thousand steps for short runs (fewer, larger steps left most latents dead in our measurements:
400k tokens at batch 4096 gave 37 % dead latents, at batch 1024 under 6 %)."""
SHORT_RUN_WARNING_STEPS = 300
"""Fewer steps than this train poorly whatever the lr: the run warns."""


@dataclass(frozen=True)
class Derived:
    """One setting `resolve` derived because the user left it open."""

    field: str
    """The TrainConfig field."""
    value: object
    """The value it got."""
    rule: str
    """Why (the rule and its source or measurement), printed at start and saved in config.json."""


def derived_batch_size(tokens: int) -> int:
    """Batch size for a run of `tokens` tokens: 2^round(log2(tokens / 1000)) clamped to [256, 4096]."""
    exponent = round(math.log2(max(tokens / STEPS_PER_BATCH_RULE, 1)))
    return int(min(RECIPE_BATCH, max(256, 2**exponent)))


def derived_lr(steps: int) -> float:
    """lr for a run of `steps` steps: 5e-5 · (24,414 / steps)^0.716, clamped to [5e-5, 2e-3] (the
    recipe's lr from 24,414 steps on; 5e-4 at 977 steps, the measured short-run anchor)."""
    lr = RECIPE_LR * (RECIPE_STEPS / max(steps, 1)) ** LR_EXPONENT
    return float(f"{min(2e-3, max(RECIPE_LR, lr)):.3g}")


def resolve(cfg: TrainConfig, train_tokens: int) -> tuple[TrainConfig, tuple[Derived, ...]]:
    """The settings the user left open (None), derived from the run's size; explicit values win.

    - tokens: one pass over the train split, at least MIN_DEFAULT_TOKENS (1M; a smaller store is
      passed over several times);
    - batch_size: the power of two nearest to tokens / 1000, in [256, 4096] (4096 from 4.1M
      tokens on, the recipe's);
    - lr: 5e-5 · (24,414 / steps)^0.716 in [5e-5, 2e-3]: the recipe's 5e-5 for 10⁸+ tokens, 5e-4
      at 977 steps (the measured anchor `SHORT_RUN`), a power law between;
    - b_dec_init: the geometric median of the data (SAELens' b_dec_init_method, Gao et al. 2024's
      TopK trainer; in our short runs it reached the same FVU at a lower L0 than zeros).
    Returns the resolved config (no None left among these fields) and what was derived.
    """
    derived: list[Derived] = []
    tokens = cfg.tokens
    if tokens is None:
        tokens = max(train_tokens, MIN_DEFAULT_TOKENS)
        passes = tokens / max(train_tokens, 1)
        rule = ("one pass over the store's train split" if tokens == train_tokens else
                f"{passes:.1f} passes over the store's {train_tokens:,}-token train split (at least "
                f"{MIN_DEFAULT_TOKENS:,} tokens; the measured short-run anchor)")
        derived.append(Derived("tokens", tokens, rule))
    batch = cfg.batch_size
    if batch is None:
        batch = derived_batch_size(tokens)
        derived.append(Derived("batch_size", batch, "the power of two nearest to tokens / 1000, in [256, 4096] "
                               "(4096, the recipe's, from 4.1M tokens on)"))
    lr = cfg.lr
    if lr is None:
        lr = derived_lr(tokens // batch)
        derived.append(Derived("lr", lr, f"5e-5 · (24,414 / {tokens // batch:,} steps)^{LR_EXPONENT:.3f}, in "
                               "[5e-5, 2e-3]: the recipe's lr from 10⁸ tokens on, 5e-4 at 977 steps (measured)"))
    b_dec_init = cfg.b_dec_init
    if b_dec_init is None:
        b_dec_init = "geometric_median"
        derived.append(Derived("b_dec_init", b_dec_init, "the data's geometric median (SAELens, Gao et al. 2024; "
                               "measured: the same FVU at a lower L0 than zeros in short runs)"))
    return cfg.replace(tokens=tokens, batch_size=batch, lr=lr, b_dec_init=b_dec_init), tuple(derived)


def short_run_warning(cfg: TrainConfig) -> str | None:
    """One line when a resolved run has too few steps to train well, saying what to change."""
    steps = cfg.tokens // cfg.batch_size
    if steps >= SHORT_RUN_WARNING_STEPS:
        return None
    return (f"warning: {steps} steps of {cfg.batch_size:,} tokens is too short to train well (the defaults aim at "
            f"≥ 1,000): raise --tokens (a small store is then passed over several times) or lower --batch-size")
