"""`ExplainConfig`: everything `sae-kit explain` (and `explain_features`) runs with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError

SCORERS = ("detection", "fuzzing")
LOCAL = "local"
"""--scorer-url value for a local scorer beside an explainer on an endpoint."""


@dataclass(frozen=True)
class ExplainConfig(JsonConfig):
    """Which features to explain, with which models, from which examples, scored how."""

    analysis: str
    """Analysis directory (from sae-kit analyze); explanations.json and autointerp/ are written into it."""
    features: str | None = None
    """Feature ids and ranges, e.g. 0-99,120 (or use --top)."""
    top: int | None = None
    """Explain the N features first by --sort-by within the density range (or use --features)."""
    sort_by: Literal["max_activation", "density", "mean_nonzero", "index"] = "max_activation"
    """Order for --top, largest first."""
    min_density: float = 0.0
    """With --top: leave out features rarer than this."""
    max_density: float = 1.0
    """With --top: leave out features denser than this."""
    explainer_model: str = "default"
    """Explainer: a local chat model (default: the embedded SmolLM2-135M-Instruct, a HF directory, a .gguf file) or, with --explainer-url, the endpoint's model name."""
    explainer_url: str | None = None
    """OpenAI-compatible endpoint of the explainer, e.g. http://localhost:8000/v1 (vLLM, llama.cpp server)."""
    scorer_model: str | None = None
    """Scorer model (default: the explainer's model)."""
    scorer_url: str | None = None
    """Endpoint of the scorer (default: the explainer's; 'local' runs the scorer model through transformers)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (local servers need none)."""
    scorers: tuple[str, ...] = SCORERS
    """Scorers to run: detection, fuzzing."""
    answer: Literal["text", "logprobs"] = "text"
    """How the scorer answers: text (a written yes/no, parsed) or logprobs (P(yes) vs P(no) of the first answer token; one excerpt per prompt)."""
    examples_per_prompt: int = 1
    """Held-out excerpts per scorer prompt (1: a yes/no each; more: the scorer lists the numbers)."""
    explain_top: int = 10
    """Top examples shown to the explainer."""
    explain_per_band: int = 2
    """Random samples of each interval band shown to the explainer."""
    n_test: int = 10
    """Held-out activating excerpts per scorer (taken in turn from the bands), and as many non-activating ones."""
    negative_candidates: int = 1024
    """Random store windows drawn to find non-activating excerpts (dense features need many)."""
    fuzz_negatives: Literal["random", "activating"] = "random"
    """Wrongly highlighted excerpts for fuzzing: random non-activating windows (Delphi's default) or held-out activating ones with the marks moved off the active tokens (harder)."""
    before: int = 12
    """Tokens shown before each example token."""
    after: int = 4
    """Tokens shown after it."""
    highlight_threshold: float = 0.3
    """Tokens marked <<like this>>: activation ≥ this fraction of the excerpt's maximum (Delphi: 0.3)."""
    max_new_tokens: int = 60
    """Longest explanation the explainer may write, in tokens."""
    temperature: float = 0.0
    """Sampling temperature for endpoints (local models always decode greedily)."""
    seed: int = 0
    """Seed of the example split, the random windows, the shuffles and the endpoints' sampling."""
    batch_size: int = 8
    """Conversations per forward pass of a local model."""
    concurrency: int = 4
    """Requests in flight at once to an endpoint."""
    timeout: float = 120.0
    """Seconds before a request to an endpoint fails."""
    device: str | None = None
    """Device of the local models and the re-encoding (default: CUDA if present, else CPU)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Weights dtype of the local models (default float32)."""
    overwrite: bool = False
    """Explain the chosen features again even if explanations.json has them."""

    config_name = "explain config"

    def __post_init__(self) -> None:
        if self.features is not None and self.top is not None:
            raise SaeKitError("give either --features or --top, not both")
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise SaeKitError(f"--scorers takes {', '.join(SCORERS)} (got {', '.join(self.scorers) or 'none'})")
        if self.answer == "logprobs" and self.examples_per_prompt != 1:
            raise SaeKitError("--answer logprobs scores one excerpt per prompt: use --examples-per-prompt 1")
        for name in ("examples_per_prompt", "n_test", "negative_candidates", "max_new_tokens", "batch_size",
                     "concurrency"):
            if getattr(self, name) < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be at least 1")
        if min(self.explain_top, self.explain_per_band, self.before, self.after) < 0 or self.explain_top + self.explain_per_band == 0:
            raise SaeKitError("--explain-top, --explain-per-band, --before and --after must be ≥ 0, and some example shown")
        if not 0 < self.highlight_threshold <= 1:
            raise SaeKitError(f"--highlight-threshold must be in (0, 1] (got {self.highlight_threshold})")
        if not 0 <= self.min_density <= self.max_density <= 1:
            raise SaeKitError(f"need 0 ≤ --min-density ≤ --max-density ≤ 1 (got {self.min_density}, {self.max_density})")

    @property
    def scorer_spec(self) -> tuple[str, str | None]:
        """(model, url or None for a local model) of the scorer: the explainer's unless told otherwise."""
        model = self.scorer_model if self.scorer_model is not None else self.explainer_model
        url = self.explainer_url if self.scorer_url is None else self.scorer_url
        return model, None if url == LOCAL else url
