"""The prompt view: which features fire on a given text, token by token (`sae-kit features`).

The text is tokenised as the store's contexts were (BOS first), run through the language model
up to the autoencoder's hook (nothing after it is computed), and encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_kit.autoencoders import RunInfo, load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.lm.corpus import special_token_ids
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import choose_device, load_model
from sae_kit.lm.tokens import display_tokens


@dataclass(frozen=True)
class PromptFeatures:
    """Per-token top features of one text. T = tokens (BOS included when prepended)."""

    text: str
    """The text as given."""
    token_ids: torch.Tensor
    """[T] int64 token ids fed to the model."""
    tokens: list[str]
    """[T] each token as displayed (see sae_kit.lm.tokens)."""
    features: torch.Tensor
    """[T, top] int64 the features with the largest activation at each token, largest first."""
    values: torch.Tensor
    """[T, top] their activations (0 where fewer than `top` features fire; then `features` is −1)."""
    overall_features: torch.Tensor
    """[n] int64 features ordered by their largest activation anywhere in the text (BOS excluded)."""
    overall_values: torch.Tensor
    """[n] that largest activation."""
    activations: torch.Tensor
    """[T, d_sae] every feature's activation at every token."""


@torch.no_grad()
def prompt_features(text: str, autoencoder, lm, hook_module: str, *, top: int = 5, prepend_bos: bool = True,
                    n_overall: int = 20) -> PromptFeatures:
    """Encode `text` at `hook_module` of `lm` (a LoadedModel) with `autoencoder`; see PromptFeatures."""
    if not text:
        raise SaeKitError("--text is empty")
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        ids = [special_token_ids(lm.tokenizer)[0]] + list(ids)
    input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
    hidden = run_to_hooks(lm.model, input_ids, [hook_module])[hook_module][0]  # [T, d_in]
    device = next(autoencoder.parameters(), torch.empty(0)).device
    z = autoencoder.encode(hidden.to(device, torch.float32)).float().cpu()  # [T, d_sae]
    top = min(top, z.shape[1])
    values, features = z.topk(top, dim=1)
    features = torch.where(values > 0, features, -1)
    values = values.clamp(min=0)
    body = z[1:] if prepend_bos and z.shape[0] > 1 else z
    peak = body.max(0).values
    n = min(n_overall, int((peak > 0).sum()))
    overall_values, overall_features = peak.topk(n)
    names = display_tokens(lm.tokenizer, ids)
    return PromptFeatures(text=text, token_ids=torch.tensor(ids), tokens=[names[i] for i in ids], features=features,
                          values=values, overall_features=overall_features, overall_values=overall_values,
                          activations=z)


@dataclass(frozen=True)
class PromptViewConfig(JsonConfig):
    """What `sae-kit features` shows: a run's features on one text."""

    nonempty = ('run',)

    run: str
    """Autoencoder run directory."""
    text: str
    """The text to encode."""
    top: int = 5
    """Features shown per token."""
    analysis: str | None = None
    """An analysis of the run: activations are then also shown as a fraction of each feature's max."""
    model: str | None = None
    """Language model (default: the one the run's store was harvested from)."""
    prepend_bos: bool = True
    """Start the text with BOS, as the store's contexts start."""
    device: str | None = None
    """cpu, cuda … (default: CUDA if present)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.text.strip():
            raise SaeKitError("--text is empty; give the text whose features to show")
        if self.top < 1:
            raise SaeKitError(f"--top must be at least 1 (got {self.top})")


def prompt_features_for_run(run: str, text: str, *, lm=None, **options) -> PromptFeatures:
    """`prompt_features` for a run directory: loads the autoencoder and the language model its
    store was harvested from (or `model`, or the given LoadedModel `lm`). `options`: the other
    fields of `PromptViewConfig` (top, model, prepend_bos, device)."""
    cfg = PromptViewConfig(run=run, text=text, **options)
    torch_device = choose_device(cfg.device)
    autoencoder = load_autoencoder(run, device=torch_device)
    info = RunInfo.of(autoencoder)
    hook = info.hook_module or info.hook
    if not hook:
        raise SaeKitError(f"{run} does not record its hook point")
    if lm is None:
        lm = load_model(info.language_model(cfg.model), device=torch_device)
    module = resolve_hooks(lm.model, [hook])[0]
    return prompt_features(text, autoencoder, lm, module, top=cfg.top, prepend_bos=cfg.prepend_bos)


def format_prompt_features(result: PromptFeatures, analysis=None) -> str:
    """A terminal table: one line per token with its top features; then the features firing most.

    With an analysis, each activation is also shown as a fraction of the feature's maximum."""
    def cell(feature: int, value: float) -> str:
        if feature < 0:
            return ""
        text = f"#{feature} {value:.2f}"
        if analysis is not None and float(analysis.max_activation[feature]) > 0:
            text += f" ({value / float(analysis.max_activation[feature]):.0%})"
        return text

    width = min(24, max(len(repr(t)) for t in result.tokens))
    lines = [f"{'token':<{width}}  top features (activation{', % of max' if analysis is not None else ''})"]
    for position, token in enumerate(result.tokens):
        cells = [cell(int(f), float(v)) for f, v in zip(result.features[position], result.values[position])]
        lines.append(f"{repr(token)[:width]:<{width}}  " + "   ".join(c for c in cells if c))
    lines.append("")
    overall = ", ".join(cell(int(f), float(v)) for f, v in zip(result.overall_features, result.overall_values))
    lines.append(f"features firing most on the text: {overall or 'none'}")
    return "\n".join(lines)
