"""The prompt view's data: the features firing on a few texts, token by token (SITE/prompts.html)."""

from __future__ import annotations

import sys

import torch

from sae_kit.analysis.prompt_view import prompt_features
from sae_kit.harvest.reader import ActivationStore
from sae_kit.lm.hooks import resolve_hooks
from sae_kit.lm.models import load_model
from sae_kit.lm.tokens import display_tokens

PROMPT_TOP = 5
"""Features listed per token."""
PROMPT_OVERALL = 20
"""Features listed per text."""


@torch.no_grad()
def prompt_views(analysis, store: ActivationStore, autoencoder, prompts, n_contexts: int, lm, device) -> list[dict]:
    """Latents z [T, d_sae] of the first stored contexts (re-encoded from the store) and of each text."""
    views = []
    model_device = next(autoencoder.parameters(), torch.empty(0)).device
    for i in range(min(n_contexts, store.n_contexts)):
        context = store.context(i, hooks=[analysis.hook])
        z = autoencoder.encode(context["activations"][analysis.hook].to(model_device)).float().cpu()
        views.append({"title": f"Stored context {i}", "ids": context["tokens"], "z": z})
    if prompts:
        if lm is None:
            print(f"loading {analysis.model} for the prompt view", file=sys.stderr)
            lm = load_model(analysis.model, device=device)
        module = resolve_hooks(lm.model, [analysis.hook])[0]
        for text in prompts:
            result = prompt_features(text, autoencoder, lm, module, top=PROMPT_TOP)
            views.append({"title": text if len(text) <= 60 else text[:57] + "…", "ids": result.token_ids,
                          "z": result.activations})
    return views


def prompts_data(views: list[dict], analysis, tokenizer, labels: torch.Tensor) -> dict:
    """{"prompts": [...]} for prompts.html; labels [F, 4] label token ids of every feature (−1 pads)."""
    ids = [view["ids"].reshape(-1) for view in views]
    listed = {}
    for view in views:
        view["top"] = view["z"].topk(min(PROMPT_TOP, view["z"].shape[1]), dim=1)
        peak = view["z"][1:].max(0).values if view["z"].shape[0] > 1 else view["z"].max(0).values
        view["overall"] = peak.topk(min(PROMPT_OVERALL, int((peak > 0).sum())))
        for f in torch.cat([view["top"].indices.reshape(-1), view["overall"].indices]).tolist():
            listed[f] = labels[f]
    every = ids + ([torch.stack(list(listed.values())).reshape(-1)] if listed else [])
    every = torch.cat(every) if every else torch.zeros(0, dtype=torch.long)
    names = display_tokens(tokenizer, every[every >= 0].tolist())
    label_text = {f: [names[int(t)] for t in label.tolist() if t >= 0] for f, label in listed.items()}
    return {"prompts": [_prompt_json(view, names, analysis, label_text) for view in views]}


def _prompt_json(view: dict, names: dict[int, str], analysis, label_text: dict[int, list[str]]) -> dict:
    """Per token: its top features [[id, value, fraction of max]]; and the text's strongest features."""
    z = view["z"]
    maximum = analysis.max_activation.clamp(min=1e-12)
    values, features = view["top"]
    tokens = []
    for position, token in enumerate(view["ids"].tolist()):
        tops = [[int(f), round(float(v), 4), round(float(v) / float(maximum[f]), 3)]
                for f, v in zip(features[position], values[position]) if v > 0]
        tokens.append({"t": names[token], "f": tops})
    overall_values, overall = view["overall"]
    return {
        "title": view["title"],
        "tokens": tokens,
        "overall": [[int(f), round(float(v), 4), round(float(v) / float(maximum[f]), 3)]
                    for f, v in zip(overall, overall_values)],
        # each listed feature's activation at every token, as a fraction of its max (for shading)
        "series": {str(int(f)): (z[:, f] / maximum[f]).double().round(decimals=3).tolist() for f in overall},
        "labels": {str(f): label_text[f] for f in {int(x) for x in features.reshape(-1).tolist()} | set(overall.tolist())},
    }
