"""Gemma Scope's own release format (Lieberum et al. 2024, arXiv:2408.05147; the Hugging Face repos
`google/gemma-scope-2b-pt-res`, `…-mlp`, …, downloaded by the user), imported as our 'jumprelu'.

Each SAE is one `params.npz` (in `layer_L/width_W/average_l0_N/`) holding

    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae]

(some copies spell the matrices `w_enc` / `w_dec`, as SAELens' `gemma_2_sae_huggingface_loader`
accepts), and computes, without subtracting b_dec from its input (SAELens' cfg for it says
`apply_b_dec_to_input: false`):

    pre = x W_enc + b_enc,   z = ReLU(pre) ⊙ 1[pre > θ],   x̂ = z W_dec + b_dec.

Ours computes pre = (x − b_dec) W_enc + b_enc', so b_enc' = b_enc + b_dec W_enc
(`absorb_input_offset_`); ReLU(pre)·1[pre > θ] = pre·1[pre > max(θ, 0)], so θ is clamped at 0
before its log is stored. A `scaling_factor` [d_sae] (SAELens' finetuning scaling) multiplies
the decoder rows, as SAELens applies it. The npz is read with `allow_pickle=False`.

Refused, with the reason: embedding SAEs (SAELens rescales them by √d_model for how Gemma scales
its embeddings; which side of that scale a hook sees is model-specific) and Gemma Scope
transcoders (their JumpReLU transcoder is not an sae-kit architecture).

The hook point comes from the path where it follows the release's layout (`gemma-scope-…-res` →
resid.L, `…-mlp` → mlp.L, with L from `layer_L`); otherwise it is unknown and commands take --hook.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.imported import ImportConfig, write_imported_run
from sae_kit.autoencoders.jumprelu import JumpReLUSparseAutoencoder
from sae_kit.errors import SaeKitError

GEMMASCOPE_PARAMS = "params.npz"

_RELEASE = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att)\b")
_TRANSCODERS = re.compile(r"gemma-scope-.*transcoders")
_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:/|$)")
_ALIAS_OF_SITE = {"res": "resid", "mlp": "mlp"}


def gemmascope_file(path: str | Path) -> Path:
    """The params.npz of `path` (the file itself or the directory holding it)."""
    path = Path(path)
    return path if path.name == GEMMASCOPE_PARAMS or path.suffix == ".npz" else path / GEMMASCOPE_PARAMS


def gemmascope_provenance(path: Path) -> tuple[str | None, dict]:
    """(hook alias, model metadata) read from a path laid out as the Hugging Face release."""
    text = path.resolve().as_posix()
    release, layer = _RELEASE.search(text), _LAYER.search(text)
    if release is None:
        return None, {}
    size, variant, site = release.groups()
    name = f"gemma-2-{size}" + ("-it" if variant == "it" else "")
    hook = f"{_ALIAS_OF_SITE[site]}.{layer.group(1)}" if layer and site in _ALIAS_OF_SITE else None
    return hook, {"model": {"spec": None, "name": name}}


def read_npz(file: Path) -> dict[str, torch.Tensor]:
    """The arrays of an npz as float32 tensors, `w_enc`/`w_dec` renamed W_enc/W_dec; no pickle."""
    if not file.is_file():
        raise SaeKitError(f"{file.parent} has no {file.name} (a Gemma Scope SAE is one params.npz)")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise SaeKitError(f"{file} cannot be read as a numpy npz without pickle ({str(err).splitlines()[0]}); "
                          "download it again") from None
    return {("W_" + name[2:] if name.startswith("w_") else name): torch.from_numpy(np.asarray(a, dtype=np.float32))
            for name, a in arrays.items()}


def check_shapes(file: Path, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(d_in, d_sae) from W_enc; a one-line error naming a missing or misshapen array."""
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if n not in state]
    if missing:
        raise SaeKitError(f"{file} lacks array(s) {', '.join(missing)}; a Gemma Scope params.npz holds "
                          "W_enc, W_dec, b_enc, b_dec, threshold")
    if state["W_enc"].dim() != 2:
        raise SaeKitError(f"{file}: W_enc has shape {tuple(state['W_enc'].shape)}, expected [d_in, d_sae]")
    d_in, d_sae = state["W_enc"].shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    if "scaling_factor" in state:
        expected["scaling_factor"] = (d_sae,)
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            if name == "W_dec" and state[name].shape[0] == d_sae:
                raise SaeKitError(f"{file}: W_dec is [{d_sae}, {state[name].shape[1]}] for d_in={d_in}: a transcoder "
                                  "(another output width); Gemma Scope's JumpReLU transcoders are not supported")
            raise SaeKitError(f"{file}: {name} has shape {tuple(state[name].shape)}, expected {list(shape)} "
                              f"for W_enc [{d_in}, {d_sae}]")
    return d_in, d_sae


def import_gemmascope(path: str | Path, device: str | torch.device | None = None,
                      hook: str | None = None) -> JumpReLUSparseAutoencoder:
    """Load a Gemma Scope params.npz (or the directory holding it) as our 'jumprelu' model taking
    raw activations, in eval mode; `hook` overrides the hook point read from the path."""
    file = gemmascope_file(path)
    parts = [part.lower() for part in file.resolve().parts[-6:]]  # the release's own folders, not the user's
    if any(_TRANSCODERS.search(part) for part in parts):
        raise SaeKitError(f"{file}: Gemma Scope transcoders (JumpReLU transcoders) are not supported; "
                          "sae-kit's transcoders are ReLU or TopK")
    if any(part == "embedding" or part.startswith("embedding_") for part in parts[:-1]):
        raise SaeKitError(f"{file}: Gemma Scope embedding SAEs need a √d_model input rescaling that depends on "
                          "the hook; not supported (residual-stream, MLP and attention-output SAEs are)")
    state = read_npz(file)
    d_in, d_sae = check_shapes(file, state)
    path_hook, provenance = gemmascope_provenance(file)
    cfg = AutoencoderConfig(arch=JumpReLUSparseAutoencoder.arch, d_in=d_in, d_sae=d_sae, decoder_norm="free",
                            hook=hook or path_hook,
                            metadata={"source": "gemma-scope", "path": str(file.resolve()), **provenance})
    model = JumpReLUSparseAutoencoder(cfg)
    with torch.no_grad():
        W_dec = state["W_dec"]
        if "scaling_factor" in state:  # SAELens: decoder rows times the finetuning scale
            W_dec = W_dec * state["scaling_factor"][:, None]
        for name, value in (("W_enc", state["W_enc"]), ("b_enc", state["b_enc"]), ("W_dec", W_dec),
                            ("b_dec", state["b_dec"])):
            getattr(model, name).copy_(value)
        # ReLU(pre)·1[pre > θ] equals pre·1[pre > max(θ, 0)]: θ ≤ 0 is a plain ReLU (log θ = −inf)
        model.log_threshold.copy_(state["threshold"].clamp_min(0).log())
        model.absorb_input_offset_(model.b_dec.detach().clone())  # theirs: pre = x W_enc + b_enc
    return model.to(device or "cpu").eval()


def import_gemmascope_run(cfg: ImportConfig) -> Path:
    """Import the Gemma Scope SAE `cfg.path` as the run directory `cfg.out`; returns cfg.out."""
    model = import_gemmascope(cfg.path, hook=cfg.hook)
    return write_imported_run(model, cfg.out, cfg.overwrite, "gemma-scope", gemmascope_file(cfg.path))
