"""Reading what an explainer or scorer model wrote: an explanation, a yes/no, a list of example numbers.

Small chat models rarely follow the requested format to the letter ("Yes.", "The answer is no",
"Examples 2 and 4", "[1, 0, 1]", "1: yes, 2: no"), so each parser accepts the common variants
and returns None when the answer cannot be read unambiguously. Callers record the raw answer
beside the parsed value, so every unparseable answer can be audited.
"""

from __future__ import annotations

import re

YES_WORDS = frozenset({"yes", "true"})
NO_WORDS = frozenset({"no", "false"})
EXPLANATION_LABEL = re.compile(r"explanation\s*[:：]\s*(.+)", re.IGNORECASE)
MAX_EXPLANATION_CHARS = 300
_WORD = re.compile(r"[a-z]+")
_PAIR = re.compile(r"(\d+)\s*[:=)\-–]\s*(yes|no|true|false|1|0)\b", re.IGNORECASE)
_BINARY_LIST = re.compile(r"\[\s*([01](?:\s*,\s*[01])*)\s*\]")


def parse_yes_no(text: str) -> bool | None:
    """True for a yes, False for a no, None if the answer says neither or both.

    Rules, in order: an answer that is just "1" or "0" (Delphi's format); the first word if it
    is yes/true or no/false ("Yes, because…"); otherwise the one kind of yes/no word present
    ("The answer is no."). Words are whole words: "not" and "nothing" are not "no"."""
    stripped = text.strip().strip(".!\"'`*[]() ")
    if stripped in ("1", "0"):
        return stripped == "1"
    words = _WORD.findall(text.lower())
    if not words:
        return None
    if words[0] in YES_WORDS or words[0] in NO_WORDS:
        return words[0] in YES_WORDS
    yes, no = any(w in YES_WORDS for w in words), any(w in NO_WORDS for w in words)
    return yes if yes != no else None


def parse_example_numbers(text: str, n: int) -> set[int] | None:
    """The 1-based numbers of the examples an answer picks out of n, or None if unreadable.

    Accepted: "2, 4", "Examples 2 and 4", "none"; per-example verdicts "1: yes, 2: no"; and a
    Delphi-style list of n 0/1 flags "[0, 1, 1]" (read as flags only when it has n entries and
    holds a 0, which no list of 1-based numbers does). A number outside 1..n, or an answer
    with no number and no "none", is unreadable."""
    pairs = _PAIR.findall(text)
    if pairs:
        numbers = {int(k) for k, _ in pairs}
        if not all(1 <= k <= n for k in numbers):
            return None
        return {int(k) for k, verdict in pairs if verdict.lower() in ("yes", "true", "1")}
    flags = _BINARY_LIST.search(text)
    if flags:
        values = [int(v) for v in flags.group(1).replace(" ", "").split(",")]
        if len(values) == n and 0 in values:
            return {i + 1 for i, v in enumerate(values) if v == 1}
    numbers = [int(k) for k in re.findall(r"\d+", text)]
    if not numbers:
        return set() if "none" in _WORD.findall(text.lower()) else None
    if not all(1 <= k <= n for k in numbers):
        return None
    return set(numbers)


def parse_explanation(text: str) -> tuple[str | None, str]:
    """(explanation, how it was found): from the last "Explanation: …" line ('label'), else the
    first non-empty line ('first line'); (None, 'empty') if the answer holds no text.

    Markers (<< >>), surrounding quotes and list bullets are removed, whitespace collapsed and
    the result cut at MAX_EXPLANATION_CHARS."""
    labelled = EXPLANATION_LABEL.findall(text)
    if labelled:
        candidate, how = labelled[-1], "label"
    else:
        lines = [line for line in text.splitlines() if _clean(line)]
        if not lines:
            return None, "empty"
        candidate, how = lines[0], "first line"
    cleaned = _clean(candidate)
    if not cleaned:
        return None, "empty"
    return cleaned[:MAX_EXPLANATION_CHARS], how


def _clean(text: str) -> str:
    text = text.replace("<<", "").replace(">>", "")
    text = " ".join(text.split())
    text = text.lstrip("-*•#> ").strip()
    return text.strip("\"'`“”‘’ ").strip()
