"""The language-model side: loading a model and its tokenizer, hook points, corpora, token display.

    models   load_model / load_tokenizer (the embedded default, a .gguf file, a local HF directory,
             a hub id), choose_device, parse_dtype
    hooks    hook-point names and aliases (resid.L, mlp.L, attn.L), capture / intervene context managers
    corpus   CorpusSpec, iter_documents (python-docs, local files, hub datasets), pack_contexts
    tokens   display_tokens: token ids as text a person can read
"""

from sae_kit.lm.corpus import CorpusSpec, iter_documents, pack_contexts, special_token_ids
from sae_kit.lm.hooks import capture, intervene, list_hook_points, resolve_hooks, run_to_hooks
from sae_kit.lm.models import DTYPES, LoadedModel, choose_device, load_model, load_tokenizer, parse_dtype
from sae_kit.lm.tokens import display_tokens, make_visible

__all__ = ["CorpusSpec", "DTYPES", "LoadedModel", "capture", "choose_device", "display_tokens", "intervene",
           "iter_documents", "list_hook_points", "load_model", "load_tokenizer", "make_visible", "pack_contexts",
           "parse_dtype", "resolve_hooks", "run_to_hooks", "special_token_ids"]
