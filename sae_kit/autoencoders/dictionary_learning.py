"""dictionary_learning's on-disk format (github.com/saprmarks/dictionary_learning, `training.py`
`trainSAE`), imported: one directory per trained dictionary holding

    ae.pt         torch.save of the dictionary's state_dict (a plain dict of tensors)
    config.json   {"trainer": {"dict_class", "trainer_class", "activation_dim", "dict_size", "k",
                   "lm_name", "layer", "submodule_name", …}, "buffer": {…}}

Older releases (the Pythia-70m `10_32768` dictionaries, `dictionaries/pythia-70m-deduped/
resid_out_layer3/10_32768/`) name no class; it is then told from the tensor names where they
are unambiguous (TopK and BatchTopK share theirs: those need dict_class). The hook point is read
from such folder names or the trainer's submodule_name (resid_out_layer3 -> resid.3, mlp_out_ ->
mlp., attn_out_ -> attn.), else unknown (commands take --hook).

`ae.pt` is read with `torch.load(weights_only=True)` only: tensors and plain containers, never
code. The final ae.pt already takes raw activations (with `normalize_activations` the trainer
calls `scale_biases(norm_factor)` before saving, so nothing is left to fold); a training backup
(keys step / ae / optimizer) is refused.

Each `dict_class` (dictionary.py and trainers/*.py) maps onto the sae-kit model computing the same
forward (the default `encode`, nn.Linear storing weight as [out, in]):

    AutoEncoder          ReLU(encoder(x − bias)), decoder(f) + bias        -> 'sae'
                         (encoder.weight [F, D], encoder.bias, decoder.weight [D, F], bias [D])
    AutoEncoderNew       ReLU(encoder(x)), decoder(f) (decoder.bias = b_dec, not subtracted) -> 'sae'
    AutoEncoderTopK      TopK_k(ReLU(encoder(x − b_dec))), decoder(f) + b_dec -> 'topk'
                         (k buffer; its `threshold` buffer only serves encode(use_threshold=True))
    BatchTopKSAE         ReLU(pre)·1[ReLU(pre) > threshold] (its default encode) -> 'batchtopk'
    MatryoshkaBatchTopKSAE  the same with W_enc, b_enc, W_dec, b_dec and group_sizes -> 'matryoshka'
                         (prefixes = cumulative group sizes)
    JumpReluAutoEncoder  ReLU(pre·1[pre > threshold]), pre = x W_enc + b_enc -> 'jumprelu'
                         (apply_b_dec_to_input False, as its trainer encodes)
    GatedAutoEncoder     1[x_enc + gate_bias > 0]·ReLU(exp(r_mag)·x_enc + mag_bias),
                         x_enc = encoder(x − decoder_bias), decoder(f) + decoder_bias -> 'gated'

Where the source does not subtract b_dec from its input, `absorb_input_offset_` folds that
exactly (b_enc ← b_enc + b_dec W_enc). Latents are the stored forward's: `from_pretrained(…,
normalize_decoder=True)` of AutoEncoder rescales them by ‖W_dec,i‖, which is not applied here.
"""

from __future__ import annotations

import json
import pickle
import re
from itertools import accumulate
from pathlib import Path

import torch

from sae_kit.autoencoders.base import Autoencoder
from sae_kit.autoencoders.batchtopk import BatchTopKSparseAutoencoder
from sae_kit.autoencoders.config import AutoencoderConfig
from sae_kit.autoencoders.gated import GatedSparseAutoencoder
from sae_kit.autoencoders.imported import ImportConfig, write_imported_run
from sae_kit.autoencoders.jumprelu import JumpReLUSparseAutoencoder
from sae_kit.autoencoders.matryoshka import MatryoshkaSparseAutoencoder
from sae_kit.autoencoders.sae import SparseAutoencoder
from sae_kit.autoencoders.topk import TopKSparseAutoencoder
from sae_kit.errors import SaeKitError

DL_WEIGHTS = "ae.pt"
DL_CONFIG = "config.json"
_SUBMODULE = re.compile(r"\b(resid|mlp|attn)_(?:out|post)_layer_?(\d+)\b")

# dict_class <- trainer_class, for config.json files that name only the trainer
DICT_CLASS_OF_TRAINER = {
    "StandardTrainer": "AutoEncoder", "StandardTrainerAprilUpdate": "AutoEncoder", "PAnnealTrainer": "AutoEncoder",
    "TopKTrainer": "AutoEncoderTopK", "BatchTopKTrainer": "BatchTopKSAE", "JumpReluTrainer": "JumpReluAutoEncoder",
    "GatedSAETrainer": "GatedAutoEncoder", "GatedAnnealTrainer": "GatedAutoEncoder",
    "MatryoshkaBatchTopKTrainer": "MatryoshkaBatchTopKSAE",
}

# dict_class -> (our class, {our tensor: (their tensor, transpose)}, whether their encoder subtracts b_dec)
_LINEAR = {"W_enc": ("encoder.weight", True), "b_enc": ("encoder.bias", False), "W_dec": ("decoder.weight", True)}
_PLAIN = {"W_enc": ("W_enc", False), "b_enc": ("b_enc", False), "W_dec": ("W_dec", False), "b_dec": ("b_dec", False)}
LAYOUTS: dict[str, tuple[type[Autoencoder], dict[str, tuple[str, bool]], bool]] = {
    "AutoEncoder": (SparseAutoencoder, {**_LINEAR, "b_dec": ("bias", False)}, True),
    "AutoEncoderNew": (SparseAutoencoder, {**_LINEAR, "b_dec": ("decoder.bias", False)}, False),
    "AutoEncoderTopK": (TopKSparseAutoencoder, {**_LINEAR, "b_dec": ("b_dec", False)}, True),
    "BatchTopKSAE": (BatchTopKSparseAutoencoder, {**_LINEAR, "b_dec": ("b_dec", False)}, True),
    "MatryoshkaBatchTopKSAE": (MatryoshkaSparseAutoencoder, _PLAIN, True),
    "JumpReluAutoEncoder": (JumpReLUSparseAutoencoder, _PLAIN, False),
    "GatedAutoEncoder": (GatedSparseAutoencoder, {"W_enc": ("encoder.weight", True), "W_dec": ("decoder.weight", True),
                                                  "b_dec": ("decoder_bias", False), "b_gate": ("gate_bias", False),
                                                  "b_mag": ("mag_bias", False), "r_mag": ("r_mag", False)}, True),
}


def read_dl_config(path: Path) -> dict:
    """config.json's "trainer" dict, with the older releases' "dictionary" dict merged in (empty
    when the file is absent)."""
    file = path / DL_CONFIG
    if not file.is_file():
        return {}
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeKitError(f"{file} is not valid JSON ({err})") from None
    parts = [raw.get(key) for key in ("dictionary", "trainer")] if isinstance(raw, dict) else []
    if not any(isinstance(part, dict) for part in parts):
        raise SaeKitError(f"{file} has no \"trainer\" object; dictionary_learning's config.json holds "
                          "{\"trainer\": {\"dict_class\": …}}")
    return {key: value for part in parts if isinstance(part, dict) for key, value in part.items()}


def dict_class_of_keys(state: dict) -> str | None:
    """The class a state dict's tensor names identify on their own (None: ambiguous, e.g. TopK vs BatchTopK)."""
    keys = set(state)
    if {"decoder_bias", "gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys and "k" not in keys:
        return "JumpReluAutoEncoder"
    if {"encoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    if {"encoder.weight", "decoder.bias"} <= keys:
        return "AutoEncoderNew"
    return None


def hook_of(path: Path, trainer: dict) -> str | None:
    """Our alias for dictionary_learning's submodule names (resid_out_layer3 -> resid.3, as its
    released dictionaries' folders; a trainer's submodule_name alike); None where none matches."""
    for text in (str(trainer.get("submodule_name") or ""), *reversed(path.resolve().parts[-3:])):
        match = _SUBMODULE.search(text)
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """ae.pt through torch.load(weights_only=True): a flat dict of tensors, as float32 (k kept)."""
    if not file.is_file():
        raise SaeKitError(f"{file.parent} has no {file.name}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SaeKitError(f"{file} cannot be read with torch.load(weights_only=True) ({first[:160]}); sae-kit loads "
                          "only plain state dicts of tensors, never pickled code") from None
    if isinstance(state, dict) and {"ae", "optimizer"} <= set(state):
        raise SaeKitError(f"{file} is a dictionary_learning training backup (step, ae, optimizer), not a finished "
                          "dictionary; finish training (the final ae.pt is a plain state dict)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SaeKitError(f"{file} is not a state dict (a dict of tensor names to tensors)")
    return state


def dict_class_of(path: Path, trainer: dict, state: dict) -> str:
    """The dictionary class config.json names (dict_class, else through trainer_class, else what
    the tensor names alone identify)."""
    name = (trainer.get("dict_class") or DICT_CLASS_OF_TRAINER.get(trainer.get("trainer_class", ""))
            or dict_class_of_keys(state))
    if name is None:
        raise SaeKitError(f"{path / DL_CONFIG} names no dict_class or known trainer_class "
                          f"(got {trainer.get('trainer_class')!r}) and the tensor names do not tell; "
                          f"add \"dict_class\" (one of {', '.join(LAYOUTS)}) to its \"trainer\"")
    if name not in LAYOUTS:
        raise SaeKitError(f"dictionary_learning class {name!r} is not supported; sae-kit reads {', '.join(LAYOUTS)}")
    return name


def config_fields(name: str, state: dict[str, torch.Tensor], trainer: dict, d_sae: int) -> dict:
    """AutoencoderConfig fields beyond arch, d_in, d_sae: k, the Matryoshka prefixes."""
    cls = LAYOUTS[name][0]
    if cls not in (TopKSparseAutoencoder, BatchTopKSparseAutoencoder, MatryoshkaSparseAutoencoder):
        return {}
    k = int(state["k"]) if "k" in state else trainer.get("k")
    if k is None:
        raise SaeKitError(f"{name}: neither ae.pt (buffer k) nor config.json (trainer.k) gives k")
    if trainer.get("k") is not None and "k" in state and int(trainer["k"]) != k:
        raise SaeKitError(f"{name}: ae.pt has k={k} but config.json says k={trainer['k']}")
    fields = {"k": int(k)}
    if cls is MatryoshkaSparseAutoencoder:
        sizes = state["group_sizes"].tolist() if "group_sizes" in state else trainer.get("group_sizes")
        if not sizes or sum(sizes) != d_sae:
            raise SaeKitError(f"{name}: group_sizes {sizes} must sum to dict_size={d_sae}")
        fields["matryoshka_prefixes"] = tuple(int(m) for m in accumulate(sizes))
    return fields


def import_dictionary_learning(path: str | Path, device: str | torch.device | None = None,
                               hook: str | None = None) -> Autoencoder:
    """Load a dictionary_learning directory (ae.pt + config.json; or the ae.pt file) as the sae-kit
    model computing the same forward (module docstring), in eval mode, taking raw activations."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    trainer = read_dl_config(path)
    state = read_state_dict(path / DL_WEIGHTS)
    name = dict_class_of(path, trainer, state)
    cls, layout, subtracts_b_dec = LAYOUTS[name]
    missing = [theirs for theirs, _ in layout.values() if theirs not in state]
    if cls in (BatchTopKSparseAutoencoder, MatryoshkaSparseAutoencoder) and "threshold" not in state:
        missing.append("threshold")  # its default encode thresholds; without it the code is a batch top-k
    if cls is JumpReLUSparseAutoencoder and "threshold" not in state:
        missing.append("threshold")
    if missing:
        raise SaeKitError(f"{path / DL_WEIGHTS} lacks tensor(s) {', '.join(missing)} of a {name}")
    ours = {key: (state[theirs].T if transpose else state[theirs]).float() for key, (theirs, transpose) in layout.items()}
    if ours["W_enc"].dim() != 2:
        raise SaeKitError(f"{path / DL_WEIGHTS}: the encoder weight is not a matrix")
    d_in, d_sae = ours["W_enc"].shape
    cfg = AutoencoderConfig(arch=cls.arch, d_in=d_in, d_sae=d_sae, decoder_norm="free",
                            **config_fields(name, state, trainer, d_sae), hook=hook or hook_of(path, trainer),
                            metadata={"source": "dictionary_learning", "path": str(path.resolve()), "dict_class": name,
                                      "model": {"spec": None, "name": trainer.get("lm_name")},
                                      "dictionary_learning_trainer": {k: v for k, v in trainer.items()
                                                                      if isinstance(v, (str, int, float, bool, type(None)))}})
    model = cls(cfg)
    with torch.no_grad():
        for key, value in ours.items():
            target = getattr(model, key)
            if tuple(target.shape) != tuple(value.shape):
                theirs = layout[key][0]
                raise SaeKitError(f"{path / DL_WEIGHTS}: {theirs} has shape {tuple(state[theirs].shape)}, which does not "
                                  f"fit d_in={d_in}, dict_size={d_sae}")
            target.copy_(value)
        if "threshold" in state and cls is not TopKSparseAutoencoder:
            load_threshold_(model, state["threshold"].float(), path / DL_WEIGHTS)
        if not subtracts_b_dec:
            model.absorb_input_offset_(model.b_dec.detach().clone())
    return model.to(device or "cpu").eval()


@torch.no_grad()
def load_threshold_(model: Autoencoder, threshold: torch.Tensor, file: Path) -> None:
    """JumpReLU: per-latent θ (ReLU(pre·1[pre > θ]) = pre·1[pre > max(θ, 0)], so clamped at 0 before
    the log); BatchTopK / Matryoshka: the scalar θ (−1, never estimated, encodes as a plain ReLU
    in both)."""
    if isinstance(model, JumpReLUSparseAutoencoder):
        if threshold.shape != (model.d_sae,):
            raise SaeKitError(f"{file}: threshold has shape {tuple(threshold.shape)}, expected [{model.d_sae}]")
        model.log_threshold.copy_(threshold.clamp_min(0).log())
    else:
        if threshold.numel() != 1:
            raise SaeKitError(f"{file}: threshold has shape {tuple(threshold.shape)}, expected a scalar")
        model.threshold.copy_(threshold.reshape(()))


def import_dictionary_learning_run(cfg: ImportConfig) -> Path:
    """Import the dictionary_learning directory `cfg.path` as the run directory `cfg.out`; returns cfg.out."""
    model = import_dictionary_learning(cfg.path, hook=cfg.hook)
    return write_imported_run(model, cfg.out, cfg.overwrite, "dictionary_learning", Path(cfg.path))
