"""Detection and fuzzing: the scorer's questions about held-out excerpts, its answers, the score.

Detection (Paulo et al. 2024): held-out activating excerpts and non-activating ones, unmarked;
"does the feature fire in this excerpt?". Fuzzing: the same activating excerpts with their
active tokens marked (≥ threshold × the excerpt's maximum, as shown to the explainer) against
excerpts whose marks are on wrong tokens — random non-activating windows with as many marks as
the activating excerpts have on average (Delphi's default), or the activating excerpts with the
marks moved off the active tokens; "are the marked tokens the ones it fires on?". Either way
the truth of each answer is known, and the score is the balanced accuracy (`scores`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sae_kit.analysis.autointerp.parsing import parse_example_numbers, parse_yes_no
from sae_kit.analysis.autointerp.prompts import detection_messages, fuzzing_messages, highlight
from sae_kit.analysis.autointerp.samples import Excerpt, FeatureExcerpts, random_marks, wrong_mark_count
from sae_kit.analysis.autointerp.scores import confusion, roc_auc

YES_NO_TOKENS = 16
"""Answer length for one excerpt: room for "Yes." and for a model that explains first."""


@dataclass(frozen=True)
class Sample:
    """One held-out excerpt as the scorer sees it, with the true answer."""

    excerpt: Excerpt
    text: str
    """The excerpt's text as shown (with << >> marks for fuzzing)."""
    label: bool
    """The true answer: activating (detection) or correctly marked (fuzzing)."""
    marked: list[int] | None
    """Token indices marked (fuzzing), None for detection."""

    def to_dict(self) -> dict:
        return {"text": self.text, "label": self.label, "marked": self.marked, "group": self.excerpt.group,
                "center": self.excerpt.center, "max_activation": round(self.excerpt.max_activation, 4),
                "tokens": self.excerpt.tokens, "activations": [round(a, 4) for a in self.excerpt.activations]}


def detection_samples(excerpts: FeatureExcerpts) -> list[Sample]:
    """Held-out activating excerpts (label True) and non-activating ones (False), unmarked."""
    return ([Sample(e, "".join(e.tokens), True, None) for e in excerpts.test]
            + [Sample(e, "".join(e.tokens), False, None) for e in excerpts.negatives])


def _marked_sample(excerpt: Excerpt, marks: list[bool], label: bool) -> Sample:
    return Sample(excerpt, highlight(excerpt.tokens, marks), label, [j for j, m in enumerate(marks) if m])


def fuzzing_samples(excerpts: FeatureExcerpts, threshold: float, negatives: str, rng: random.Random) -> list[Sample]:
    """Correctly marked held-out excerpts (True) and wrongly marked ones (False); see the module docstring."""
    positives = [_marked_sample(e, e.marked(threshold), True) for e in excerpts.test]
    count = wrong_mark_count(excerpts.test, threshold)
    pool = excerpts.negatives if negatives == "random" else excerpts.test
    wrong = []
    for e in pool:
        marks = random_marks(e, count, threshold, rng)
        if marks is not None:
            wrong.append(_marked_sample(e, marks, False))
    return positives + wrong


def ask(scorer, samples: list[Sample], explanation: str, kind: str, *, answer: str, per_prompt: int,
        rng: random.Random) -> dict:
    """Put `samples` to `scorer` in shuffled prompts of `per_prompt` excerpts; the verdicts, the
    score and every prompt with its answer (for auditing)."""
    build = detection_messages if kind == "detection" else fuzzing_messages
    order = rng.sample(range(len(samples)), len(samples))
    groups = [order[i : i + per_prompt] for i in range(0, len(order), per_prompt)]
    conversations = [build(explanation, [samples[i].text for i in group]) for group in groups]
    predictions: list[bool | None] = [None] * len(samples)
    probabilities: list[float | None] | None = None
    queries = []
    if answer == "logprobs":
        probabilities = [None] * len(samples)
        for group, messages, (p_yes, mass) in zip(groups, conversations, scorer.yes_probability(conversations)):
            (i,) = group
            probabilities[i] = p_yes
            predictions[i] = None if p_yes is None else p_yes >= 0.5
            queries.append({"messages": messages, "samples": group, "p_yes": p_yes, "yes_no_mass": mass})
    else:
        tokens = YES_NO_TOKENS if per_prompt == 1 else YES_NO_TOKENS + 4 * per_prompt
        for group, messages, text in zip(groups, conversations, scorer.generate(conversations, tokens)):
            if len(group) == 1:
                verdict = parse_yes_no(text)
                verdicts = None if verdict is None else [verdict]
            else:
                picked = parse_example_numbers(text, len(group))
                verdicts = None if picked is None else [j + 1 in picked for j in range(len(group))]
            for j, i in enumerate(group):
                predictions[i] = None if verdicts is None else verdicts[j]
            queries.append({"messages": messages, "samples": group, "answer": text, "parsed": verdicts})
    labels = [s.label for s in samples]
    counts = confusion(labels, predictions)
    result = {"balanced_accuracy": counts.balanced_accuracy, "n": len(samples), "n_unparsed": counts.unparsed,
              "confusion": counts.to_dict()}
    if probabilities is not None:
        result["auc"] = roc_auc(labels, probabilities)
    samples_out = [dict(s.to_dict(), prediction=p) for s, p in zip(samples, predictions)]
    if probabilities is not None:
        for record, p in zip(samples_out, probabilities):
            record["p_yes"] = p
    return {**result, "samples": samples_out, "queries": queries}
