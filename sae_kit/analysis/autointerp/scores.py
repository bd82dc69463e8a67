"""Scores of an explanation from the scorer's verdicts: confusion counts, balanced accuracy, AUC.

Detection and fuzzing (Paulo et al. 2024, arXiv 2410.13928; Delphi's classifier scorers) ask a
yes/no question about examples whose true answer is known (activating or not, correctly
highlighted or not). With P positives and N negatives among the answers that could be read,

    balanced accuracy = ½ (TP / P + TN / N),

so always answering "yes" (or "no") scores 0.5 however unbalanced the examples are, and a
perfect scorer scores 1. Unreadable answers are left out of P and N (Delphi drops them too)
and counted separately, so a score is never silently built from guesses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Confusion:
    """Counts of the scorer's verdicts against the truth."""

    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int
    unparsed: int
    """Answers that could not be read as a verdict (not in the four counts above)."""

    @property
    def positives(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def negatives(self) -> int:
        return self.true_negatives + self.false_positives

    @property
    def balanced_accuracy(self) -> float | None:
        """½ (TP/P + TN/N); None when either class has no readable answer."""
        if self.positives == 0 or self.negatives == 0:
            return None
        return 0.5 * (self.true_positives / self.positives + self.true_negatives / self.negatives)

    def to_dict(self) -> dict:
        return asdict(self)


def confusion(labels: list[bool], predictions: list[bool | None]) -> Confusion:
    """Confusion counts of `predictions` (None: unreadable) against `labels` (True: positive)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    counts = {"tp": 0, "fn": 0, "tn": 0, "fp": 0, "unparsed": 0}
    for label, predicted in zip(labels, predictions):
        if predicted is None:
            counts["unparsed"] += 1
        elif label:
            counts["tp" if predicted else "fn"] += 1
        else:
            counts["fp" if predicted else "tn"] += 1
    return Confusion(true_positives=counts["tp"], false_negatives=counts["fn"], true_negatives=counts["tn"],
                     false_positives=counts["fp"], unparsed=counts["unparsed"])


def balanced_accuracy(labels: list[bool], predictions: list[bool | None]) -> float | None:
    """½ (TP/P + TN/N) over the readable predictions (see `Confusion.balanced_accuracy`)."""
    return confusion(labels, predictions).balanced_accuracy


def roc_auc(labels: list[bool], scores: list[float | None]) -> float | None:
    """Area under the ROC curve of `scores` (e.g. P(yes)) for `labels`, None-scores left out.

    AUC = P(score of a random positive > score of a random negative) + ½ P(tie) (the
    Mann–Whitney statistic); None when either class has no score."""
    pos = [s for label, s in zip(labels, scores) if label and s is not None]
    neg = [s for label, s in zip(labels, scores) if not label and s is not None]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))
