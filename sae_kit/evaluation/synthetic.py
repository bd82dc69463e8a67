"""Ground truth: synthetic data in superposition, and whether a model recovers its features.

Data (after Sharkey, Braun & Millidge 2022, "Taking features out of superposition with sparse
autoencoders"): a fixed dictionary of n_features unit vectors d_j ∈ R^d_in with
n_features > d_in (superposition), and

    x = Σ_j f_j d_j,   f_j = a_j · b_j,  b_j ~ Bernoulli(p),  a_j ~ Uniform(0, 1),

with p = active_features / n_features (a few features per sample). A model "finds the
features" when every true direction has a close decoder column: the mean max cosine
similarity

    MMCS = (1/n_features) Σ_j max_i cos(d_j, W_dec,i)

is near 1. `run_benchmark` trains the SAE and the baselines with the real trainer
(`sae_kit.training.loop.fit`) and reports MMCS, FVU and L0 for each.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from sae_kit.autoencoders.registry import ARCHITECTURES
from sae_kit.errors import SaeKitError
from sae_kit.evaluation import metrics
from sae_kit.training.input_stats import InputStats
from sae_kit.training.loop import fit, make_slot
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.specs import model_specs


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic data set."""

    d_in: int = 32
    """Dimension of the data."""
    n_features: int = 64
    """True features (directions); more than d_in puts them in superposition."""
    active_features: float = 3.0
    """Expected number of active features per sample (p = active_features / n_features)."""
    seed: int = 0
    """Seed of the dictionary."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_features < 1 or not 0 < self.active_features <= self.n_features:
            raise SaeKitError("synthetic data needs d_in, n_features ≥ 1 and 0 < active_features ≤ n_features")


class SyntheticData:
    """The dictionary [n_features, d_in] (unit rows) and samplers of x [n, d_in]."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        directions = torch.randn(cfg.n_features, cfg.d_in, generator=g)
        self.dictionary = directions / directions.norm(dim=-1, keepdim=True)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, d_in], f [n, n_features]): n samples and their true feature activations."""
        p = self.cfg.active_features / self.cfg.n_features
        active = torch.rand(n, self.cfg.n_features, generator=generator) < p
        f = torch.rand(n, self.cfg.n_features, generator=generator) * active
        return f @ self.dictionary, f

    def batches(self, batch_size: int, seed: int = 1, skip_batches: int = 0) -> Iterator[torch.Tensor]:
        """Endless, deterministic batches [batch_size, d_in]; skip_batches resumes at batch n."""
        g = torch.Generator().manual_seed(seed)
        for i in itertools.count():
            x, _ = self.sample(batch_size, g)
            if i >= skip_batches:
                yield x


SPARSE_ARCHS = tuple(name for name, cls in ARCHITECTURES.items() if cls.sweep_field is not None and not cls.has_target)
"""The sparse architectures (those with a sparsity to sweep) the ground-truth check covers:
sae, topk, batchtopk, jumprelu, gated, matryoshka."""


def arch_settings(arch: str, data_cfg: "SyntheticConfig") -> dict:
    """TrainConfig settings of one architecture in the benchmark, where the shared defaults do not fit.

    jumprelu: λ = 1, log θ gets 10× the lr — 400 steps are far fewer than Gemma Scope's ~10^5,
    and Adam moves log θ by about lr per step from its 0.001 init — and ε = 0.01: with Gemma
    Scope's 0.001 the rectangle kernel sees few pre-activations at this input scale (MMCS 0.956
    instead of 0.996). gated: λ = 3 (its L1 acts on
    the gate pre-activations, which sit further from 0 than a ReLU SAE's latents). matryoshka:
    2 × n_features latents with prefixes (n_features, 2 × n_features), so that the inner
    dictionary can hold every true feature (nested prefixes smaller than the number of
    independent features must blend them, which is what they are for on real data).
    """
    n = data_cfg.n_features
    return {"jumprelu": {"l0_coefficients": (1.0,), "jumprelu_threshold_lr_scale": 10.0, "jumprelu_bandwidth": 0.01},
            "gated": {"l1_coefficients": (3.0,)},
            "matryoshka": {"d_sae": 2 * n, "matryoshka_prefixes": (n, 2 * n)}}.get(arch, {})


def mmcs(true_directions: torch.Tensor, learned_directions: torch.Tensor) -> float:
    """Mean max cosine similarity (1/n) Σ_j max_i cos(t_j, l_i): true [n, d], learned [m, d]."""
    t = true_directions / true_directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    l = learned_directions / learned_directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return float((t @ l.T).max(dim=1).values.mean())


def run_benchmark(
    data_cfg: SyntheticConfig = SyntheticConfig(),
    archs: tuple[str, ...] = ("sae", "topk", "ae", "pca"),
    *,
    d_sae: int | None = None,
    l1_coefficient: float = 1.0,
    k: int | None = None,
    steps: int = 400,
    batch_size: int = 512,
    lr: float = 5e-3,
    eval_samples: int = 16384,
    seed: int = 0,
    threads: int | None = 1,
    options: dict | None = None,
) -> dict[str, dict]:
    """Train each arch on the synthetic data with `sae_kit.training.loop.fit`; name -> {arch, d_sae, mmcs, fvu, l0}.

    Defaults are sized for a CPU test (seconds per model): latents = n_features, k = round(active
    features), λ = l1_coefficient, a higher lr than the LM recipe (400 steps instead of ~10^5), plus
    `arch_settings` per architecture, then `options` (TrainConfig fields) over everything. Every
    model sees the same batches. PCA gets at most d_in components: it cannot represent more
    directions than dimensions, which is the point. `threads` (default 1) sets torch's thread
    count for the run: matrices this small gain nothing from more, and on a busy machine extra
    threads make it many times slower.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        data = SyntheticData(data_cfg)
        base = dict(store="synthetic", out="-", l1_coefficients=(l1_coefficient,),
                    ks=(k or max(1, round(data_cfg.active_features)),), d_sae=d_sae or data_cfg.n_features,
                    pca_components=min(d_sae or data_cfg.n_features, data_cfg.d_in), batch_size=batch_size, lr=lr,
                    seed=seed, log_every=steps, checkpoint_every_tokens=None, dead_window_tokens=50 * batch_size,
                    b_dec_init="zeros")
        results = {}
        for arch in archs:
            cfg = TrainConfig(**{**base, **arch_settings(arch, data_cfg), **(options or {}), "archs": (arch,)})
            results.update(_train_and_measure(data, cfg, steps, eval_samples))
        return results
    finally:
        torch.set_num_threads(before)


def _train_and_measure(data: SyntheticData, cfg: TrainConfig, steps: int, eval_samples: int) -> dict[str, dict]:
    """Train the models of `cfg` for `steps` on data's batches (seeded by cfg.seed); their MMCS, FVU, L0."""
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    probe, _ = data.sample(eval_samples, g)
    scale = data.cfg.d_in**0.5 / float(probe.norm(dim=-1).mean())  # E‖x‖ = √d, as in the recipe
    stats = InputStats(scale=scale, mean=probe.mean(0).tolist(), geometric_median=None, n_tokens=eval_samples)
    device = torch.device("cpu")
    slots = [make_slot(spec, cfg, device, cfg.dead_window_tokens // cfg.batch_size, stats)
             for spec in model_specs(cfg, data.cfg.d_in)]
    torch.manual_seed(cfg.seed)
    fit(cfg, slots, lambda skip: data.batches(cfg.batch_size, cfg.seed + 1, skip), steps, stats, device=device,
        progress=False)
    results = {}
    with torch.no_grad():
        for slot in slots:
            model = slot.model.eval()
            model.fold_input_scale_(scale)
            z = model.encode(probe)
            results[slot.name] = {
                "arch": model.arch,
                "d_sae": model.d_sae,
                "mmcs": mmcs(data.dictionary, model.W_dec),
                "fvu": float(metrics.fvu(probe, model.decode(z))),
                "l0": float(metrics.l0(z)),
            }
    return results


def format_results(results: dict[str, dict], data_cfg: SyntheticConfig) -> str:
    """A markdown table of `run_benchmark` results."""
    lines = [f"Synthetic data: {asdict(data_cfg)}", "",
             "| model | d_sae | MMCS | FVU | L0 |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['d_sae']} | {r['mmcs']:.3f} | {r['fvu']:.3f} | {r['l0']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m sae_kit.evaluation.synthetic: the ground-truth table, all baselines
    print(format_results(run_benchmark(archs=SPARSE_ARCHS + ("ae", "dae", "vae", "pca")), SyntheticConfig()))
