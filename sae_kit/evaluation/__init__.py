"""Evaluation: metrics (pure functions with their formulas), evaluating runs on held-out data, ground truth.

    metrics     MSE, FVU, L0, dead / dense fractions, next-token CE, KL, CE loss recovered
    evaluator   EvalConfig, evaluate: reconstruction metrics and spliced-model CE / KL on the
                store's held-out split, for a run or every run of a sweep, and the suites below
    core        SAELens / SAEBench core set: cosine, L2 ratio, relative reconstruction bias,
                legacy explained variance, densities and their histogram, weight geometry
    suites      --suite probing / absorption for every model of a sweep at once; eval.md tables
    probing     sparse probing on mean-pooled latents beside the raw-activation ceiling
    tasks       the probing tasks: offline from the stdlib (package, prose vs code), SAEBench's hub sets
    absorption  first-letter feature absorption (Chanin et al. 2024)
    logistic    batched L2 logistic regression (scikit-learn's objective) for every probe
    synthetic   data in superposition with a known dictionary, and whether models recover it (MMCS)
"""

from sae_kit.evaluation.evaluator import EvalConfig, ReconstructionStats, evaluate, results_table

__all__ = ["EvalConfig", "ReconstructionStats", "evaluate", "results_table"]
