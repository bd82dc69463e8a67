"""The chat prompts of autointerp: the explainer's, and the scorer's for detection and fuzzing.

The method follows Bills et al. (2023) and Paulo et al. (2024, arXiv 2410.13928; EleutherAI's
Delphi): the explainer sees excerpts with the tokens where the feature fires marked <<like
this>> and each marked token's strength on a 1–10 scale of the feature's maximum; a scorer,
given only the explanation, says of held-out excerpts whether the feature fires in them
(detection) or whether the marked tokens are the ones it fires on (fuzzing). The wording and
the worked examples here are our own. Each prompt is a list of chat messages
({"role": "system" | "user" | "assistant", "content": str}), the input every backend takes.
"""

from __future__ import annotations

import math

LEFT, RIGHT = "<<", ">>"
EXPLANATION_PREFIX = "Explanation:"
"""How the explainer's answer must end; local models are made to start their answer with it."""
MAX_STRENGTHS_PER_EXAMPLE = 10

EXPLAINER_SYSTEM = f"""You study one feature of a language model: a unit that fires on some tokens of a text and stays silent on others.
You are shown excerpts of text in which the feature fires. The tokens it fires on are marked {LEFT}like this{RIGHT}. Below each excerpt, every marked token is listed with the feature's strength on it, from 1 (weak) to 10 (its strongest).
Work out what the marked tokens have in common: the tokens themselves, the words just before them, or the kind of text around them. Then describe, in one short phrase, when the feature fires. Do not mention the {LEFT} {RIGHT} marks.
End your answer with one line of the form
{EXPLANATION_PREFIX} <short phrase>"""

EXPLAINER_SHOT = (
    f"Excerpt 1: the meeting was moved to {LEFT}March{RIGHT} 3, 2021 because\n"
    "Strengths: March 10\n"
    f"Excerpt 2: first released in {LEFT}June{RIGHT} of that year, the\n"
    "Strengths: June 8\n"
    f"Excerpt 3: valid until the end of {LEFT}Oct{RIGHT}ober unless renewed\n"
    "Strengths: Oct 5",
    "Explanation: names of months, mostly inside dates",
)

DETECTION_SYSTEM = """A feature of a language model fires on some tokens of a text. You are given a description of the feature and an excerpt of text.
Decide whether the feature fires anywhere in the excerpt, that is, whether the excerpt contains what the description describes."""

FUZZING_SYSTEM = f"""A feature of a language model fires on some tokens of a text. You are given a description of the feature and an excerpt of text in which some tokens are marked {LEFT}like this{RIGHT}.
Decide whether the marked tokens are the ones the feature fires on, that is, whether every marked token is what the description describes."""

ONE_ANSWER = "Answer with one word: yes or no."
MANY_ANSWER = "Answer with the numbers of those excerpts, separated by commas, or with the word none."

DETECTION_SHOTS = (
    ("names of months, mostly inside dates", "the report was filed on 4 April 2019 by", True),
    ("names of months, mostly inside dates", "return the sum of the two numbers as a", False),
)
FUZZING_SHOTS = (
    ("names of months, mostly inside dates", f"the report was filed on 4 {LEFT}April{RIGHT} 2019 by", True),
    ("names of months, mostly inside dates", f"the report was filed {LEFT}on{RIGHT} 4 April 2019 by", False),
)


def highlight(tokens: list[str], marked: list[bool]) -> str:
    """The tokens joined into text, each run of consecutive marked tokens wrapped in << >>."""
    out, inside = [], False
    for token, mark in zip(tokens, marked):
        if mark and not inside:
            out.append(LEFT)
        elif not mark and inside:
            out.append(RIGHT)
        inside = mark
        out.append(token)
    if inside:
        out.append(RIGHT)
    return "".join(out)


def strength(value: float, max_activation: float) -> int:
    """An activation on Bills et al.'s 0–10 scale: ceil(10 · value / max), clamped to [0, 10]."""
    if max_activation <= 0 or value <= 0:
        return 0
    return max(0, min(10, math.ceil(10 * value / max_activation - 1e-9)))


def explainer_example(number: int, tokens: list[str], activations: list[float], marked: list[bool],
                      max_activation: float) -> str:
    """One excerpt of the explainer's prompt: the highlighted text and its marked tokens' strengths."""
    pairs = [f"{token.strip() or repr(token)} {strength(value, max_activation)}"
             for token, value, mark in zip(tokens, activations, marked) if mark]
    return (f"Excerpt {number}: {highlight(tokens, marked)}\n"
            f"Strengths: {', '.join(pairs[:MAX_STRENGTHS_PER_EXAMPLE])}")


def explainer_messages(excerpts: list[str]) -> list[dict]:
    """The explainer's conversation for excerpts made by `explainer_example`."""
    shot_user, shot_answer = EXPLAINER_SHOT
    return [
        {"role": "system", "content": EXPLAINER_SYSTEM},
        {"role": "user", "content": shot_user},
        {"role": "assistant", "content": shot_answer},
        {"role": "user", "content": "\n".join(excerpts)},
    ]


def _question(explanation: str, texts: list[str], question: str) -> str:
    if len(texts) == 1:
        return f"Description: {explanation}\n\nExcerpt: {texts[0]}\n\n{question} {ONE_ANSWER}"
    listed = "\n".join(f"Excerpt {i + 1}: {text}" for i, text in enumerate(texts))
    return f"Description: {explanation}\n\n{listed}\n\n{question} {MANY_ANSWER}"


def _scorer_messages(system: str, shots, explanation: str, texts: list[str], one: str, many: str) -> list[dict]:
    messages = [{"role": "system", "content": system}]
    if len(texts) == 1:  # worked examples show the one-word answer format
        for shot_explanation, shot_text, answer in shots:
            messages.append({"role": "user", "content": _question(shot_explanation, [shot_text], one)})
            messages.append({"role": "assistant", "content": "yes" if answer else "no"})
        return messages + [{"role": "user", "content": _question(explanation, texts, one)}]
    return messages + [{"role": "user", "content": _question(explanation, texts, many)}]


def detection_messages(explanation: str, texts: list[str]) -> list[dict]:
    """Detection: does the feature fire anywhere in the (unmarked) excerpt(s)?"""
    return _scorer_messages(DETECTION_SYSTEM, DETECTION_SHOTS, explanation, texts,
                            "Does the feature fire in this excerpt?", "In which excerpts does the feature fire?")


def fuzzing_messages(explanation: str, texts: list[str]) -> list[dict]:
    """Fuzzing: are the marked tokens of the excerpt(s) the ones the feature fires on?"""
    return _scorer_messages(FUZZING_SYSTEM, FUZZING_SHOTS, explanation, texts,
                            "Are the marked tokens the ones the feature fires on?",
                            "In which excerpts are the marked tokens the ones the feature fires on?")
