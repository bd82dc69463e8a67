"""The quick form of the fault suite (the full one is scripts/fault_injection.py): one SIGKILL at
a random moment of each stage, then a resume that must reach the uninterrupted result, and
every fault check (full disk, read-only directory, corrupted shard, non-finite loss)."""

from __future__ import annotations

import random

import pytest

from tests.faults import checks
from tests.faults.harness import kill_chain, reference, stages_for

QUICK_SCALE = 0.5
"""Half the script's token counts."""
QUICK_STAGES = ("harvest", "train (store)", "train (on the fly)", "analyze")
"""The demo's kills run in the script only (its rerun after an interruption is tested in tests/demo)."""


@pytest.fixture(scope="module")
def stages(kill_world):
    return {stage.name: stage for stage in stages_for(kill_world, scale=QUICK_SCALE)}


@pytest.fixture(scope="module")
def references(stages, tmp_path_factory):
    """The uninterrupted runs, each made once: stage name -> Reference."""
    root = tmp_path_factory.mktemp("references")
    return {name: reference(stages[name], root / name.replace(" ", "-")) for name in QUICK_STAGES}


@pytest.mark.parametrize("name", QUICK_STAGES)
def test_a_kill_and_resume_reach_the_uninterrupted_result(name, stages, references, tmp_path):
    rng = random.Random(sum(map(ord, name)))
    # the kill lands in the first half of the working period; on a busy machine a run can still
    # finish sooner than the reference did, so the moment is drawn again, earlier, up to 4 times
    for attempt in range(4):
        result = kill_chain(stages[name], references[name], tmp_path / f"try-{attempt}", rng, kills=1,
                            window=0.5 / 2**attempt)
        if result.kills or result.failed:
            break
    assert not result.failed, result.failed
    assert result.kills == 1, "the process ended before the kill, 4 times"
    comparison = result.comparison
    assert comparison.identical, comparison.detail
    assert comparison.tokens_lost == comparison.tokens_duplicated == 0


def test_disk_full_during_a_harvest(stages, references, tmp_path):
    result = checks.disk_full_harvest(stages["harvest"], references["harvest"], tmp_path)
    assert result.passed, result.detail


def test_disk_full_while_writing_a_checkpoint(stages, references, tmp_path):
    result = checks.injected_training_fault(stages["train (store)"], references["train (store)"], tmp_path,
                                            "enospc:7", r"disk is full", "disk full while a checkpoint is written")
    assert result.passed, result.detail


def test_read_only_output_directories(kill_world, tmp_path):
    result = checks.read_only_outputs(kill_world, tmp_path)
    assert result.passed, result.detail


def test_a_shard_corrupted_while_training_reads_it(references, stages, tmp_path):
    result = checks.corrupted_shard_in_training(references["harvest"].work / stages["harvest"].output, tmp_path)
    assert result.passed, result.detail


def test_a_non_finite_loss_keeps_the_last_good_checkpoint(stages, references, tmp_path):
    result = checks.injected_training_fault(stages["train (store)"], references["train (store)"], tmp_path,
                                            "nan-loss:40", r"step 40: the loss of .* is not finite; the last good "
                                            r"checkpoint \(32 steps\)", "non-finite loss at step 40")
    assert result.passed, result.detail
