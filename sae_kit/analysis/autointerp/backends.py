"""Chat models for autointerp: a local Hugging Face model through transformers, or any
OpenAI-compatible endpoint (vLLM, llama.cpp's server, SGLang, Ollama, hosted APIs).

Both take conversations (lists of {"role", "content"} messages) and offer two calls:
`generate` (the text of each answer) and `yes_probability` (P(yes) / (P(yes) + P(no)) of the
answer's first token, for scoring without parsing). Local generation is greedy, so a run is
deterministic; endpoints get temperature 0 and the seed, which servers honour to varying degrees.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from sae_kit.errors import SaeKitError
from sae_kit.lm.models import LoadedModel, load_model

INSTALL_OPENAI = "pip install openai"
YES_NO_WORDS = {True: ("yes", "Yes", "YES"), False: ("no", "No", "NO")}


class TransformersChat:
    """A local chat model (any Hugging Face causal LM whose tokenizer has a chat template)."""

    kind = "transformers"

    def __init__(self, spec: str = "default", *, device=None, dtype=None, batch_size: int = 8,
                 loaded: LoadedModel | None = None):
        self.lm = loaded if loaded is not None else load_model(spec, device=device, dtype=dtype)
        self.model_name = self.lm.name if spec == "default" else str(spec)
        self.batch_size = batch_size
        tokenizer = self.lm.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise SaeKitError(f"the tokenizer of {spec!r} has no chat template; autointerp needs an instruct/chat model")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # generation continues from the last position of every row
        self.yes_no_ids = _answer_token_ids(tokenizer)

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model_name, "url": None}

    def _encode(self, conversations: list[list[dict]], prefix: str | None = None) -> dict[str, torch.Tensor]:
        tokenizer = self.lm.tokenizer
        if prefix:  # the answer starts with `prefix`: the model continues it (prefill)
            texts = [tokenizer.apply_chat_template(c + [{"role": "assistant", "content": prefix}], tokenize=False,
                                                   continue_final_message=True) for c in conversations]
        else:
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int, prefix: str | None = None) -> list[str]:
        """Greedy answers, `batch_size` conversations per forward pass. With `prefix`, each answer
        is made to begin with it (returned included): small models then keep to the format."""
        from transformers import GenerationConfig

        tokenizer = self.lm.tokenizer
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        answers = []
        for start in range(0, len(conversations), self.batch_size):
            enc = self._encode(conversations[start : start + self.batch_size], prefix)
            out = self.lm.model.generate(**enc, generation_config=config)
            answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [((prefix or "") + a).strip() for a in answers]

    @torch.no_grad()
    def yes_probability(self, conversations: list[list[dict]]) -> list[tuple[float | None, float]]:
        """(P(yes) / (P(yes) + P(no)), P(yes) + P(no)) of the first answer token of each conversation."""
        out = []
        yes, no = (torch.tensor(self.yes_no_ids[k], device=self.lm.device) for k in (True, False))
        for start in range(0, len(conversations), self.batch_size):
            enc = self._encode(conversations[start : start + self.batch_size])
            logits = self.lm.model(**enc).logits[:, -1].float()  # [b, vocab]: left padding puts the answer last
            probs = logits.softmax(-1)
            p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
            for a, b in zip(p_yes.tolist(), p_no.tolist()):
                out.append((a / (a + b) if a + b > 0 else None, a + b))
        return out


def _answer_token_ids(tokenizer) -> dict[bool, list[int]]:
    """First token ids of yes/no spellings (with and without a leading space); ids shared by
    both answers are dropped. SaeKitError if either answer has none left."""
    ids = {}
    for answer, words in YES_NO_WORDS.items():
        found = set()
        for word in words:
            for text in (word, " " + word):
                encoded = tokenizer.encode(text, add_special_tokens=False)
                if encoded:
                    found.add(encoded[0])
        ids[answer] = found
    shared = ids[True] & ids[False]
    result = {answer: sorted(found - shared) for answer, found in ids.items()}
    if not result[True] or not result[False]:
        raise SaeKitError("the scorer's tokenizer cannot tell 'yes' from 'no' by their first token; use --answer text")
    return result


class OpenAIChat:
    """An OpenAI-compatible chat-completions endpoint (the `openai` package, imported lazily)."""

    kind = "openai"

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", seed: int = 0,
                 temperature: float = 0.0, timeout: float = 120.0, concurrency: int = 4):
        try:
            import openai
        except ImportError:
            raise SaeKitError(f"an endpoint (--explainer-url / --scorer-url) needs the openai package: {INSTALL_OPENAI}") from None
        self.openai = openai
        self.url, self.model_name = url, model
        self.seed, self.temperature, self.concurrency = seed, temperature, concurrency
        # local servers (vLLM, llama.cpp) accept any key; hosted APIs read theirs from the environment
        self.client = openai.OpenAI(base_url=url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout,
                                    max_retries=2)

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model_name, "url": self.url}

    def _create(self, messages: list[dict], **kwargs):
        try:
            return self.client.chat.completions.create(model=self.model_name, messages=messages,
                                                       temperature=self.temperature, seed=self.seed, **kwargs)
        except self.openai.APIConnectionError as err:
            raise SaeKitError(f"cannot reach the endpoint {self.url} ({err}); is the server running?") from err
        except self.openai.APIError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SaeKitError(f"the endpoint {self.url} refused a request for model {self.model_name!r}: {first}") from err

    def _map(self, function, items: list) -> list:
        if self.concurrency <= 1 or len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:  # results keep the input order
            return list(pool.map(function, items))

    def generate(self, conversations: list[list[dict]], max_new_tokens: int, prefix: str | None = None) -> list[str]:
        """The answers; `prefix` is not sent (chat endpoints do not all support prefilling)."""
        def one(messages):
            response = self._create(messages, max_tokens=max_new_tokens)
            return (response.choices[0].message.content or "").strip() if response.choices else ""
        return self._map(one, conversations)

    def yes_probability(self, conversations: list[list[dict]]) -> list[tuple[float | None, float]]:
        """From the top log-probabilities of the first answer token (the server must return logprobs)."""
        def one(messages):
            response = self._create(messages, max_tokens=1, logprobs=True, top_logprobs=20)
            content = getattr(response.choices[0].logprobs, "content", None) if response.choices else None
            if not content:
                raise SaeKitError(f"the endpoint {self.url} returned no logprobs; use --answer text with it")
            mass = {True: 0.0, False: 0.0}
            for entry in content[0].top_logprobs or []:
                word = entry.token.strip().lower()
                for answer, words in YES_NO_WORDS.items():
                    if word == words[0]:
                        mass[answer] += math.exp(entry.logprob)
            total = mass[True] + mass[False]
            return (mass[True] / total if total > 0 else None, total)
        return self._map(one, conversations)


def make_chat_model(model: str, url: str | None, *, device=None, dtype=None, batch_size: int = 8,
                    api_key_env: str = "OPENAI_API_KEY", seed: int = 0, temperature: float = 0.0,
                    timeout: float = 120.0, concurrency: int = 4):
    """An OpenAIChat for `url` if given, else a TransformersChat loading `model`."""
    if url:
        return OpenAIChat(url, model, api_key_env=api_key_env, seed=seed, temperature=temperature, timeout=timeout,
                          concurrency=concurrency)
    return TransformersChat(model, device=device, dtype=dtype, batch_size=batch_size)
