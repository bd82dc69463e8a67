"""Fixtures of the fault suite: a world of real broken files (tests/faults/battery.py) and the
inputs of the kill harness (tests/faults/harness.py)."""

from __future__ import annotations

import pytest

from tests.faults.battery import build_narrow_store, build_world


@pytest.fixture(scope="session")
def narrow_store(tmp_path_factory, tiny_tokenizer):
    """A store of a 16-wide tiny Llama: a store of another width than the tiny runs take."""
    return build_narrow_store(tmp_path_factory.mktemp("narrow"), tiny_tokenizer)


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_store, tiny_run, tiny_analysis, tiny_llama_dir, narrow_store):
    return build_world(tmp_path_factory.mktemp("world"), tiny_store, tiny_run, tiny_analysis, tiny_llama_dir,
                       narrow_store)


@pytest.fixture(scope="session")
def kill_world(tiny_llama_dir, tiny_store, tiny_run, tiny_analysis) -> dict[str, str]:
    """What the kill stages and fault checks read: the tiny Llama, its store, a run, an analysis."""
    return {"lm": str(tiny_llama_dir), "store": str(tiny_store), "run": str(tiny_run),
            "analysis": str(tiny_analysis.path)}
