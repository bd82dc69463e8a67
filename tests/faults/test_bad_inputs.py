"""Every bad input of the battery (tests/faults/battery.py) gives one clear line on stderr, the
right exit status, no traceback, and leaves what was already written unchanged."""

from __future__ import annotations

import re

import pytest

from tests.faults.battery import CASES, run_case


def test_the_battery_is_large_and_covers_every_command():
    assert len(CASES) >= 50
    commands = {case.argv[0] for case in CASES}
    assert commands >= {"hooks", "harvest", "verify", "train", "evaluate", "analyze", "features", "dashboard",
                        "steer", "demo"}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, world, tmp_path):
    outcome = run_case(case, world, tmp_path)
    assert not outcome.traceback, outcome.stderr
    errors = outcome.error_lines()
    assert len(errors) == 1, outcome.stderr
    assert re.search(case.message, errors[0]), errors[0]
    assert outcome.code == case.code, (outcome.code, errors[0])
    assert not outcome.changed, f"{case.protect} changed"
    assert "internal error" not in errors[0]
