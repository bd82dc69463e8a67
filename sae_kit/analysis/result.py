"""The analysis directory and its reader: `FeatureAnalysis`, `load_analysis`, `select_features`.

    A/analysis.json          {"format": "sae-kit-analysis", "run", "store", "hook", "model",
                              "n_tokens", "top_k", "n_quantiles", "hist_bins", ...}
    A/features.safetensors   the per-feature tensors (FeatureAnalysis lists them with shapes)
    A/tokenizer/             a copy of the model's tokenizer (when logit effects were computed)
    A/explanations.json      explanations and their scores, when `sae-kit explain` ran (`load_explanations`)

Written by `sae_kit.analysis.streaming.analyze`; everything here is re-exported from `sae_kit.analysis`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae_kit.artifacts import read_tagged_json
from sae_kit.errors import SaeKitError
from sae_kit.lm.models import load_tokenizer

FORMAT = "sae-kit-analysis"
INFO_FILE = "analysis.json"
TENSORS_FILE = "features.safetensors"
TOKENIZER_DIR = "tokenizer"
SORT_KEYS = ("max_activation", "density", "mean_nonzero", "index")
EXPLANATIONS_FILE = "explanations.json"
EXPLANATIONS_FORMAT = "sae-kit-explanations"
EXPLANATIONS_VERSION = 1


@dataclass(frozen=True)
class FeatureAnalysis:
    """A loaded analysis directory. F = d_sae, k = top_k, Q = n_quantiles, H = hist_bins.

    Global token indices refer to rows of the store (`ActivationStore.gather`); −1 pads."""

    path: Path
    """The analysis directory."""
    info: dict
    """analysis.json: format, run, store, hook, model, n_tokens, top_k, n_quantiles, config, timings."""
    density: torch.Tensor
    """[F] fraction of analysed tokens where z > 0."""
    fire_count: torch.Tensor
    """[F] int64 number of analysed tokens where z > 0."""
    max_activation: torch.Tensor
    """[F] largest z over the analysed tokens (0 for a dead feature)."""
    mean_nonzero: torch.Tensor
    """[F] mean of z over the tokens where z > 0."""
    top_values: torch.Tensor
    """[F, k] the k largest activations, descending (ties: smaller token index first); 0 pads."""
    top_indices: torch.Tensor
    """[F, k] int64 global token index of each; −1 where the feature fired on fewer than k tokens."""
    band_values: torch.Tensor
    """[F, Q, k] a uniform sample of k activations from each interval band, descending."""
    band_indices: torch.Tensor
    """[F, Q, k] int64 their global token indices (−1 pads)."""
    band_counts: torch.Tensor
    """[F, Q] int64 tokens in each band (the population the sample is drawn from)."""
    band_lower: torch.Tensor
    """[F, Q] lower activation edge of each band (band 0 starts at 0, band Q−1 is the highest)."""
    band_upper: torch.Tensor
    """[F, Q] upper activation edge of each band (the top band's is the maximum)."""
    hist_counts: torch.Tensor
    """[F, H] int64 histogram of the non-zero activations: bin j covers [j, j+1) · hist_upper / H."""
    hist_upper: torch.Tensor
    """[F] upper edge of the histogram: the power of two just above the maximum (0 if dead)."""
    promoted_ids: torch.Tensor | None
    """[F, n] int64 tokens whose logit the feature's decoder direction raises most (None: not computed)."""
    promoted_logits: torch.Tensor | None
    """[F, n] logit change per unit activation for each promoted token."""
    suppressed_ids: torch.Tensor | None
    """[F, n] int64 tokens whose logit it lowers most."""
    suppressed_logits: torch.Tensor | None
    """[F, n] their (negative) logit change per unit activation."""

    def load_tokenizer(self):
        """The tokenizer of the analysed model: the copy in A/tokenizer if present, else loaded from the model spec."""
        if (self.path / TOKENIZER_DIR / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.path / TOKENIZER_DIR))
        return load_tokenizer(self.model)

    @property
    def n_features(self) -> int:
        return int(self.density.shape[0])

    @property
    def run(self) -> str | None:
        return self.info.get("run")

    @property
    def store(self) -> str:
        return self.info["store"]

    @property
    def hook(self) -> str:
        return self.info["hook"]

    @property
    def model(self) -> str:
        return self.info["model"]

    @property
    def n_tokens(self) -> int:
        return int(self.info["n_tokens"])

    @property
    def top_k(self) -> int:
        return int(self.info["top_k"])

    @property
    def n_quantiles(self) -> int:
        return int(self.info["n_quantiles"])

    def __repr__(self) -> str:
        alive = int((self.fire_count > 0).sum())
        return (f"FeatureAnalysis({str(self.path)!r}, {self.n_features} features ({alive} fired), "
                f"{self.n_tokens} tokens, hook {self.hook})")


TENSOR_FIELDS = tuple(f.name for f in dataclasses.fields(FeatureAnalysis) if f.name not in ("path", "info"))
LOGIT_FIELDS = ("promoted_ids", "promoted_logits", "suppressed_ids", "suppressed_logits")


def load_analysis(path: str | Path) -> FeatureAnalysis:
    """Read an analysis directory written by `analyze`."""
    path = Path(path)
    info = read_tagged_json(path, INFO_FILE, FORMAT, "an analysis directory", "`sae-kit analyze`")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except FileNotFoundError:
        raise SaeKitError(f"{path} lacks {TENSORS_FILE}; the analysis did not finish: run it again") from None
    except Exception as err:
        raise SaeKitError(f"{path / TENSORS_FILE} cannot be read ({err}); run the analysis again") from err
    missing = [name for name in TENSOR_FIELDS if name not in tensors and name not in LOGIT_FIELDS]
    if missing:
        raise SaeKitError(f"{path / TENSORS_FILE} lacks {', '.join(missing)}; written by another version? run it again")
    return FeatureAnalysis(path=path, info=info, **{name: tensors.get(name) for name in TENSOR_FIELDS})


def load_explanations(analysis_dir: str | Path) -> dict[int, dict]:
    """Feature id -> {"explanation": str, "detection": {"balanced_accuracy", "n", …}, "fuzzing": …}
    from A/explanations.json (written by `sae-kit explain`); {} when the file is absent."""
    path = Path(analysis_dir)
    if not (path / EXPLANATIONS_FILE).is_file():
        return {}
    payload = read_tagged_json(path, EXPLANATIONS_FILE, EXPLANATIONS_FORMAT, "explanations of features",
                               "`sae-kit explain`")
    if payload.get("format_version", 1) > EXPLANATIONS_VERSION:
        raise SaeKitError(f"{path / EXPLANATIONS_FILE} has format version {payload['format_version']}, "
                          f"newer than this sae-kit reads ({EXPLANATIONS_VERSION}); upgrade sae-kit")
    try:
        return {int(feature): entry for feature, entry in payload.get("features", {}).items()}
    except (AttributeError, ValueError) as err:
        raise SaeKitError(f"{path / EXPLANATIONS_FILE} has malformed feature entries ({err}); run sae-kit explain again") from err


# ----------------------------------------------------------------------------- choosing features


def strongest_features(analysis: FeatureAnalysis, n: int, min_density: float, max_density: float) -> list[int]:
    """The n strongest features (by max activation) with density in [min_density, max_density],
    topped up with the strongest that fired at any density when too few qualify (short runs,
    tiny models): what the demo shows, steers and puts in its gallery."""
    chosen = select_features(analysis, min_density=min_density, max_density=max_density, limit=n)
    if len(chosen) < n:
        extra = select_features(analysis, min_density=0.0, max_density=1.0, limit=n * 4)
        chosen += [f for f in extra if f not in chosen][: n - len(chosen)]
    return chosen


def select_features(
    analysis: FeatureAnalysis, *, min_density: float = 1e-4, max_density: float = 1e-2,
    sort_by: str = "max_activation", descending: bool = True, limit: int | None = None,
) -> list[int]:
    """Feature ids with min_density ≤ density ≤ max_density, sorted by `sort_by` (ties: smaller id).

    sort_by: 'max_activation' | 'density' | 'mean_nonzero' | 'index'. The defaults pick the
    features usually worth reading first: neither dead nor very rare (≥ 1 in 10,000 tokens),
    not dense (≤ 1 %), the strongest first. Dead features (density 0) are never returned.
    """
    if sort_by not in SORT_KEYS:
        raise SaeKitError(f"sort by one of {', '.join(SORT_KEYS)} (got {sort_by!r})")
    density = analysis.density
    keep = (density >= min_density) & (density <= max_density) & (analysis.fire_count > 0)
    ids = keep.nonzero().squeeze(1)
    if sort_by != "index":
        values = getattr(analysis, sort_by)[ids].double()
        order = torch.argsort(-values if descending else values, stable=True)
        ids = ids[order]
    elif descending:
        ids = ids.flip(0)
    ids = ids.tolist()
    return ids[:limit] if limit is not None else ids


def parse_feature_list(text: str, n_features: int) -> list[int]:
    """'0-99', '3,17,40-45' -> sorted unique ids; SaeKitError if malformed or out of range."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                ids.update(range(lo, hi + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise SaeKitError(f"cannot read feature list {text!r}: use ids and ranges like 0-99,120,130-140") from None
    bad = [i for i in ids if not 0 <= i < n_features]
    if bad:
        raise SaeKitError(f"feature id {min(bad) if min(bad) < 0 else max(bad)} is out of range: "
                          f"the analysis has features 0-{n_features - 1}")
    if not ids:
        raise SaeKitError(f"feature list {text!r} names no feature")
    return sorted(ids)
