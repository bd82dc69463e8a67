"""Autointerp's pure parts against hand computations: answer parsing, scores, prompts, the example split."""

from __future__ import annotations

import random

import pytest

from sae_kit.analysis.autointerp.parsing import parse_example_numbers, parse_explanation, parse_yes_no
from sae_kit.analysis.autointerp.prompts import detection_messages, explainer_example, fuzzing_messages, highlight, strength
from sae_kit.analysis.autointerp.samples import Excerpt, random_marks, split_examples, wrong_mark_count
from sae_kit.analysis.autointerp.scores import balanced_accuracy, confusion, roc_auc
from sae_kit.analysis.autointerp.config import ExplainConfig
from sae_kit.errors import SaeKitError


@pytest.mark.parametrize("text, expected", [
    ("yes", True), ("Yes.", True), ("YES!", True), ("no", False), ("No, it does not.", False),
    ("1", True), ("0", False), ("[1]", True), ("The answer is no.", False), ("I think yes", True),
    ("true", True), ("False", False), ("not sure", None), ("nothing here", None), ("", None),
    ("yes or no? no", True),  # the first word decides
    ("maybe yes, maybe no", None),  # both, and neither first: unreadable
    ("Noted.", None),  # "noted" is not "no"
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text, n, expected", [
    ("2, 4", 5, {2, 4}), ("Examples 1 and 3", 3, {1, 3}), ("none", 4, set()), ("None of them.", 4, set()),
    ("[0, 1, 1]", 3, {2, 3}),  # a 0/1 flag list of length n holding a 0
    ("[1, 2]", 3, {1, 2}),  # numbers, not flags: no 0 in it
    ("1: yes, 2: no, 3: yes", 3, {1, 3}), ("1 - no\n2 - no", 2, set()),
    ("7", 3, None),  # out of range
    ("0", 3, None),  # numbers are 1-based
    ("I cannot tell", 3, None), ("", 2, None),
])
def test_parse_example_numbers(text, n, expected):
    assert parse_example_numbers(text, n) == expected


@pytest.mark.parametrize("text, expected", [
    ("Step 1: the marks are months.\nExplanation: names of months", ("names of months", "label")),
    ("explanation: 'opening brackets'", ("opening brackets", "label")),
    ("Explanation: first\nExplanation: <<second>> one", ("second one", "label")),  # the last label, marks removed
    ("  \n- Python keywords after a newline\nmore", ("Python keywords after a newline", "first line")),
    ("", (None, "empty")), ("  \n <<>> \n", (None, "empty")),
])
def test_parse_explanation(text, expected):
    assert parse_explanation(text) == expected


def test_balanced_accuracy_against_hand_counts():
    labels = [True, True, True, False, False]
    predictions = [True, False, None, False, True]
    c = confusion(labels, predictions)
    assert (c.true_positives, c.false_negatives, c.true_negatives, c.false_positives, c.unparsed) == (1, 1, 1, 1, 1)
    assert c.balanced_accuracy == pytest.approx(0.5 * (1 / 2 + 1 / 2))
    # 3 of 4 positives found, both negatives rejected: ½ (3/4 + 2/2) = 0.875
    assert balanced_accuracy([True] * 4 + [False] * 2, [True, True, True, False, False, False]) == pytest.approx(0.875)
    # always "yes" scores 0.5 however unbalanced the classes
    assert balanced_accuracy([True] * 9 + [False], [True] * 10) == pytest.approx(0.5)
    assert balanced_accuracy([True, False], [True, False]) == 1.0
    assert balanced_accuracy([True, True], [True, False]) is None  # no negative: undefined
    assert balanced_accuracy([True, False], [True, None]) is None  # the only negative unreadable
    with pytest.raises(ValueError):
        confusion([True], [])


def test_roc_auc_is_the_mann_whitney_statistic():
    # pairs (pos, neg): (.9,.5) win, (.9,.4) win, (.4,.5) loss, (.4,.4) tie -> (1 + 1 + 0 + .5) / 4
    assert roc_auc([True, True, False, False], [0.9, 0.4, 0.5, 0.4]) == pytest.approx(0.625)
    assert roc_auc([True, False, False], [0.2, None, 0.1]) == 1.0
    assert roc_auc([True, True], [0.2, 0.3]) is None


def test_highlight_and_strength():
    tokens = ["a", " b", " c", " d"]
    assert highlight(tokens, [False, True, True, False]) == "a<< b c>> d"
    assert highlight(tokens, [True, False, False, True]) == "<<a>> b c<< d>>"
    assert highlight(tokens, [False] * 4) == "a b c d"
    assert [strength(v, 2.0) for v in (2.0, 0.62, 0.2, 0.0001, 0.0, -1.0)] == [10, 4, 1, 1, 0, 0]
    assert strength(1.0, 0.0) == 0
    shown = explainer_example(3, ["x", " y", "↵"], [0.0, 1.0, 0.5], [False, True, True], 1.0)
    assert shown == "Excerpt 3: x<< y↵>>\nStrengths: y 10, ↵ 5"


def test_scorer_prompts_show_one_or_several_excerpts():
    one = detection_messages("months", ["in May"])
    assert one[0]["role"] == "system" and one[-1]["role"] == "user"
    assert "Excerpt: in May" in one[-1]["content"] and "yes or no" in one[-1]["content"]
    assert [m["role"] for m in one[1:-1]] == ["user", "assistant", "user", "assistant"]  # two worked examples
    many = fuzzing_messages("months", ["<<May>> 1", "in <<the>> year"])
    assert "Excerpt 1: <<May>> 1\nExcerpt 2: in <<the>> year" in many[-1]["content"]
    assert "numbers" in many[-1]["content"] and len(many) == 2


def excerpt(context: int, position: int, group: str = "band 0", acts=(0.0, 1.0, 0.2)) -> Excerpt:
    return Excerpt(tokens=["a", "b", "c"][: len(acts)], activations=list(acts), position=1, center=context * 100 + position,
                   context=context, context_position=position, group=group)


def test_split_examples_holds_out_band_samples_that_do_not_overlap_the_shown_ones():
    top = [excerpt(0, 10, "top"), excerpt(1, 10, "top"), excerpt(2, 10, "top")]
    bands = [[excerpt(5, 5), excerpt(6, 5), excerpt(7, 5)],            # band 0
             [excerpt(0, 12, "band 1"), excerpt(8, 5, "band 1"), excerpt(9, 5, "band 1")]]  # (0, 12) overlaps top 0
    explain, test = split_examples(top, bands, explain_top=2, explain_per_band=1, n_test=10, span=4,
                                   rng=random.Random(0))
    assert explain[:2] == top[:2] and len(explain) == 4
    assert {e.group for e in explain[2:]} == {"band 0", "band 1"}
    shown = {(e.context, e.context_position) for e in explain}
    held = [(e.context, e.context_position) for e in test]
    assert not shown & set(held) and (0, 12) not in held
    assert test[0].group == "band 1"  # taken in turn, highest band first
    assert len(test) == 6 - 2 - (0 if (0, 12) in shown else 1)
    _, capped = split_examples(top, bands, explain_top=2, explain_per_band=1, n_test=2, span=4, rng=random.Random(0))
    assert [e.group for e in capped] == ["band 1", "band 0"]


def test_wrong_marks_avoid_the_active_tokens():
    e = excerpt(0, 1, acts=(0.0, 1.0, 0.5, 0.1, 0.0))
    e = Excerpt(tokens=list("abcde"), activations=e.activations, position=1, center=1, context=0, context_position=1,
                group="band 0")
    assert e.marked(0.3) == [False, True, True, False, False]
    marks = random_marks(e, 2, 0.3, random.Random(0))
    assert sum(marks) == 2 and not (marks[1] or marks[2])
    full = Excerpt(tokens=["a", "b"], activations=[1.0, 1.0], position=0, center=0, context=0, context_position=0,
                   group="top")
    assert random_marks(full, 1, 0.3, random.Random(0)) is None
    assert wrong_mark_count([e, full], 0.3) == 2  # mean of 2 and 2 marked tokens
    assert wrong_mark_count([], 0.3) == 1


def test_config_refuses_what_cannot_work():
    with pytest.raises(SaeKitError, match="either"):
        ExplainConfig(analysis="a", features="1", top=3)
    with pytest.raises(SaeKitError, match="scorers"):
        ExplainConfig(analysis="a", scorers=("simulation",))
    with pytest.raises(SaeKitError, match="one excerpt"):
        ExplainConfig(analysis="a", answer="logprobs", examples_per_prompt=4)
    assert ExplainConfig(analysis="a").scorer_spec == ("default", None)
    assert ExplainConfig(analysis="a", explainer_url="http://x/v1", explainer_model="m").scorer_spec == ("m", "http://x/v1")
    local = ExplainConfig(analysis="a", explainer_url="http://x/v1", explainer_model="m", scorer_model="default",
                          scorer_url="local")
    assert local.scorer_spec == ("default", None)
