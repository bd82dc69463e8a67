"""Autointerp: explanations of features written by a chat model, scored by detection and fuzzing
(Bills et al. 2023; Paulo et al. 2024, arXiv 2410.13928; EleutherAI's Delphi).

    config      ExplainConfig (what `sae-kit explain` runs with)
    run         explain_features: the loop over features, explanations.json and the audit files
    samples     the excerpts: explanation / held-out split, non-activating windows from the store
    prompts     the explainer's and the scorer's chat prompts, << >> highlighting
    scoring     detection and fuzzing samples, the scorer's questions and verdicts
    scores      confusion counts, balanced accuracy, AUC
    parsing     reading explanations, yes/no answers and lists of example numbers
    backends    TransformersChat (local HF chat model), OpenAIChat (OpenAI-compatible endpoint)
"""

from sae_kit.analysis.autointerp.backends import OpenAIChat, TransformersChat, make_chat_model
from sae_kit.analysis.autointerp.config import ExplainConfig
from sae_kit.analysis.autointerp.run import explain_features

__all__ = ["ExplainConfig", "OpenAIChat", "TransformersChat", "explain_features", "make_chat_model"]
