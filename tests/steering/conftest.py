"""Fixtures shared by the steering tests: one thread, the tiny Llama loaded once per module."""

from __future__ import annotations

import pytest
import torch

from sae_kit.lm.models import load_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when the cores are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu")
