"""Generation for steering experiments: the same decoding for the baseline and every steered run.

`generate` wraps Hugging Face ``generate``: greedy, or sampling reseeded before every call so that
baseline and steered runs draw the same random numbers and differ only through the steering.
`encode_prompt` builds prompts the way the activation store built its contexts ([BOS] + text),
so features fire on them as they did in the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.lm.corpus import special_token_ids
from sae_kit.steering.hook import POSITIONS, Positions, SteeringHook


@dataclass(frozen=True)
class GenerateOptions(JsonConfig):
    """How the model generates: the same for the baseline and every steered run."""

    max_new_tokens: int = 40
    """Tokens to generate after the prompt (fewer if the model ends the text)."""
    temperature: float = 0.0
    """0: greedy decoding; > 0: sampling at this temperature (with `top_p`, under `seed`)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 keeps the whole distribution); ignored when greedy."""
    seed: int = 0
    """The RNG is reset to this seed before every generation, so baseline and steered runs draw
    the same random numbers and differ only through the steering."""
    positions: Positions = "all"
    """Steer every position ('all') or only the generated ones ('generated')."""
    chat: bool = False
    """Wrap each prompt in the tokenizer's chat template as a user turn (instruct models)."""
    prepend_bos: bool = True
    """Start a plain prompt with the BOS token, as the activation store's contexts start, so the
    feature statistics (max activation) were measured in the same setting."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise SaeKitError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise SaeKitError(f"temperature must be ≥ 0 and top_p in (0, 1] (got {self.temperature}, {self.top_p})")
        if self.positions not in POSITIONS:
            raise SaeKitError(f"positions must be one of {', '.join(POSITIONS)} (got {self.positions!r})")


def encode_prompt(tokenizer, prompt: str, chat: bool = False, prepend_bos: bool = True) -> torch.Tensor:
    """Token ids [1, prompt_len]: [BOS] + the prompt's tokens, as the store's contexts are built
    (`sae_kit.lm.corpus.pack_contexts`), or the chat template's user turn (its own special tokens)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SaeKitError("this tokenizer has no chat template; drop --chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
    else:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if not ids:
            raise SaeKitError(f"the prompt {prompt!r} is empty after tokenisation; give some text")
        if prepend_bos:
            ids = [special_token_ids(tokenizer)[0], *ids]
    return torch.tensor([ids], dtype=torch.long)


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    options: GenerateOptions,
    steering: SteeringHook | None = None,
    **generate_kwargs,
):
    """`model.generate` on input_ids [1, prompt_len] under `options`, reseeded with options.seed.

    With a `SteeringHook` (installed by `attach`/`steer`), it is reset to this prompt first.
    Returns what `generate` returns (token ids [1, prompt_len + n_new] unless asked for more).
    """
    if steering is not None:
        steering.reset(prompt_len=input_ids.shape[1])
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    sampling = options.temperature > 0
    # top_k=0 turns off transformers' default top-k of 50: sampling uses the whole (top-p) distribution.
    settings = dict(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=0) if sampling \
        else dict(do_sample=False)
    eos = getattr(model.generation_config, "eos_token_id", None)
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(options.seed)
        return model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                              max_new_tokens=options.max_new_tokens, pad_token_id=pad,
                              **settings, **generate_kwargs)
