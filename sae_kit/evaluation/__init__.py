"""Evaluation: metrics (pure functions with their formulas), evaluating runs on held-out data, ground truth.

    metrics     MSE, FVU, L0, dead / dense fractions, next-token CE, KL, CE loss recovered
    evaluator   EvalConfig, evaluate: reconstruction metrics and spliced-model CE / KL on the
                store's held-out split, for a run or every run of a sweep
    synthetic   data in superposition with a known dictionary, and whether models recover it (MMCS)
"""

from sae_kit.evaluation.evaluator import EvalConfig, ReconstructionStats, evaluate, results_table

__all__ = ["EvalConfig", "ReconstructionStats", "evaluate", "results_table"]
