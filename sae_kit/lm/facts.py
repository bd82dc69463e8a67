"""What can be known about a language model without loading it: layers, width, context length.

Commands check their inputs against these facts before the ~17 s it takes to load (and
de-quantise) a model, so a wrong hook or an impossible context length fails at once:

- a Hugging Face directory: its config.json (and, for full hook checks, the module tree built on
  the meta device: no weights are read);
- a .gguf file (the embedded default too): the key-value header at the start of the file, read
  here directly (the `gguf` package's reader parses every tensor's metadata and is much slower);
- a hub id: nothing (checked after loading, as before).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from sae_kit.errors import SaeKitError

ALIAS = re.compile(r"^(resid|mlp|attn|mlp_in)\.(-?\d+)$")

# GGUF value types (ggml's gguf.h) -> struct format of one value; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass(frozen=True)
class ModelFacts:
    """Facts about a model read from its files; any may be None when the files do not say."""

    architecture: str | None
    """e.g. 'llama', 'gpt2' (GGUF's general.architecture or config.json's model_type)."""
    n_layers: int | None
    """Decoder blocks (resid.0 … resid.{n_layers − 1})."""
    d_model: int | None
    """Width of the residual stream."""
    max_positions: int | None
    """Longest context the model supports."""
    config: dict | None = None
    """config.json of a Hugging Face directory (None for GGUF files)."""

    def check_context_len(self, context_len: int) -> None:
        if self.max_positions and context_len > self.max_positions:
            raise SaeKitError(f"--context-len {context_len} is longer than the model supports ({self.max_positions} "
                              f"positions); use at most {self.max_positions}")

    def check_aliases(self, hooks) -> None:
        """resid.L / mlp.L / attn.L / mlp_in.L with L outside the model's layers fail here."""
        if not self.n_layers:
            return
        for hook in hooks:
            match = ALIAS.match(hook)
            if match and not -self.n_layers <= int(match.group(2)) < self.n_layers:
                kind = match.group(1)
                raise SaeKitError(f"unknown hook {hook!r}; closest valid names: {kind}.0 … {kind}.{self.n_layers - 1} "
                                  f"(the model has {self.n_layers} layers; `sae-kit hooks` lists them all)")


def model_facts(location: str, gguf_file: str | None = None) -> ModelFacts | None:
    """Facts for a `from_pretrained` location (+ GGUF file name); None for a hub id."""
    path = Path(location)
    if gguf_file:
        return gguf_facts(path / gguf_file)
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SaeKitError(f"{config_file} is not valid JSON ({err}); the model directory is damaged") from err
    get = lambda *names: next((config[n] for n in names if isinstance(config.get(n), int)), None)  # noqa: E731
    return ModelFacts(config.get("model_type"), get("num_hidden_layers", "n_layer"), get("hidden_size", "n_embd"),
                      get("max_position_embeddings", "n_positions", "n_ctx"), config)


def gguf_facts(file: Path) -> ModelFacts:
    """Read the header of a .gguf file until the architecture's block count, width and context
    length are known (format: ggml's docs/gguf.md, versions 2 and 3)."""
    wanted: dict[str, object] = {}
    try:
        with open(file, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise SaeKitError(f"{file} is not a GGUF file (wrong magic bytes); pass a .gguf model file")
            version, _n_tensors, n_kv = struct.unpack("<IQQ", handle.read(20))
            if version < 2:
                raise SaeKitError(f"{file} is GGUF version {version}; versions 2 and 3 are supported")
            architecture = None
            for _ in range(n_kv):
                key = _gguf_string(handle)
                value = _gguf_value(handle, struct.unpack("<I", handle.read(4))[0])
                if key == "general.architecture":
                    architecture = value
                elif architecture and key in (f"{architecture}.block_count", f"{architecture}.embedding_length",
                                              f"{architecture}.context_length"):
                    wanted[key.rsplit(".", 1)[1]] = int(value)
                if architecture and len(wanted) == 3:
                    break
    except (struct.error, UnicodeDecodeError, MemoryError, OverflowError) as err:
        raise SaeKitError(f"{file} has a damaged GGUF header ({type(err).__name__}); download the file again") from err
    except OSError as err:
        raise SaeKitError(f"cannot read {file} ({err.strerror})") from err
    return ModelFacts(architecture, wanted.get("block_count"), wanted.get("embedding_length"),
                      wanted.get("context_length"))


def _gguf_string(handle) -> str:
    (length,) = struct.unpack("<Q", handle.read(8))
    if length > 1 << 24:
        raise OverflowError("implausible string length")
    return handle.read(length).decode("utf-8")


def _gguf_value(handle, kind: int):
    if kind in _GGUF_SCALARS:
        fmt = "<" + _GGUF_SCALARS[kind]
        return struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _gguf_string(handle)
    if kind == 9:
        element, count = struct.unpack("<IQ", handle.read(12))
        if element in _GGUF_SCALARS:  # skip numeric arrays without decoding them
            handle.seek(count * struct.calcsize("<" + _GGUF_SCALARS[element]), 1)
            return None
        for _ in range(count):
            _gguf_value(handle, element)
        return None
    raise struct.error(f"unknown GGUF value type {kind}")
