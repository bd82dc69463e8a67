"""Rows of Neuronpedia's bulk-import layout (camelCase fields), built from SAEDashboard batch features.

    EXPORT/{model_id}/{source_id}/release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
    EXPORT/{model_id}/{source_id}/features/batch-N.jsonl.gz      one Feature row per feature
    EXPORT/{model_id}/{source_id}/activations/batch-N.jsonl.gz   one Activation row per example
    EXPORT/{model_id}/{source_id}/explanations/batch-N.jsonl.gz  one Explanation row per explained feature

The fields, their order and their defaults are those of the dataclasses in SAEDashboard's
`sae_dashboard/neuronpedia/neuronpedia_export.py` (SourceRelease, Model, SourceSet, Source,
Feature, Activation, which mirror neuronpedia-utils' `db_models`), filled the way its
`export_neuronpedia_dashboards` fills them; Explanation follows neuronpedia-utils'
`db_models/explanation.py` and the columns of its `export-data.py`. Every row is a plain dict
with all fields present; dates are ISO 8601 strings (what orjson writes for a datetime).
Feature indices are strings, the type those dataclasses declare (SAEDashboard itself passes
the batch's int through; Neuronpedia's database stores text).
"""

from __future__ import annotations

import hashlib


def row_id(*parts) -> str:
    """A deterministic 25-character id in cuid style ('c' + hex), unique per (model, source, feature, slot)."""
    return "c" + hashlib.sha1("/".join(str(p) for p in parts).encode()).hexdigest()[:24]


def release_row(*, name: str, title: str, url: str, creator_name: str, creator_id: str, created: str) -> dict:
    """SourceRelease (as `_maybe_write_release` fills it)."""
    return {"name": name, "description": title, "creatorName": creator_name, "creatorId": creator_id,
            "visibility": "PUBLIC", "isNewUi": False, "featured": False, "descriptionShort": title,
            "urls": [url] if url else [], "creatorEmail": None, "creatorNameShort": creator_name,
            "defaultSourceSetName": None, "defaultSourceId": None, "defaultUmapSourceIds": [], "createdAt": created}


def model_row(*, model_id: str, creator_id: str, layers: int, created: str) -> dict:
    """Model (as `_maybe_write_model` fills it, plus the number of layers where known)."""
    return {"id": model_id, "instruct": model_id.endswith("-it") or model_id.endswith("-instruct"),
            "creatorId": creator_id, "displayNameShort": model_id, "displayName": model_id, "tlensId": None,
            "dimension": None, "visibility": "PUBLIC", "defaultSourceSetName": None, "defaultSourceId": None,
            "inferenceEnabled": False, "layers": layers, "neuronsPerLayer": 0, "createdAt": created, "owner": "",
            "updatedAt": created, "website": None}


def sourceset_row(*, model_id: str, name: str, description: str, creator_id: str, creator_name: str,
                  release: str, created: str) -> dict:
    """SourceSet (as `_maybe_write_sourceset` fills it)."""
    return {"modelId": model_id, "name": name, "creatorId": creator_id, "hasDashboards": True,
            "visibility": "PUBLIC", "description": description, "type": "", "creatorName": creator_name, "urls": [],
            "creatorEmail": None, "releaseName": release, "defaultOfModelId": None, "defaultRange": 1,
            "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False, "showHeadAttribution": False,
            "showUmap": False, "createdAt": created}


def source_row(*, source_id: str, model_id: str, set_name: str, creator_id: str, hf_repo_id: str,
               hf_weights_path: str, n_prompts: int, n_tokens_in_prompt: int, dataset: str, created: str) -> dict:
    """Source (as `_write_source` fills it: hfFolderId is the weights path without its file name)."""
    return {"id": source_id, "modelId": model_id, "setName": set_name, "creatorId": creator_id,
            "hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": [], "saelensConfig": None,
            "saelensRelease": None, "saelensSaeId": None, "hfRepoId": hf_repo_id,
            "hfFolderId": "/".join(hf_weights_path.split("/")[:-1]), "visibility": "PUBLIC",
            "defaultOfModelId": None, "hasUmap": False, "hasUmapLogSparsity": False, "hasUmapClusters": False,
            "num_prompts": n_prompts, "num_tokens_in_prompt": n_tokens_in_prompt, "dataset": dataset, "notes": None,
            "createdAt": created}


def feature_row(feature: dict, *, model_id: str, source_id: str, creator_id: str, hook_name: str,
                created: str) -> dict:
    """Feature row of one SAEDashboard batch feature (`_process_batch`): maxActApprox is the largest
    value of its activations; a feature with a vector gets it as steering vector, of default
    strength maxActApprox."""
    max_act = max((max(a["values"]) for a in feature["activations"] if a["values"]), default=0.0)
    has_vector = bool(feature.get("vector"))
    keys = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
            "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
            "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
            "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
            "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
            "decoder_weights_dist")
    return {"modelId": model_id, "layer": source_id, "index": str(feature["feature_index"]), "creatorId": creator_id,
            "createdAt": created, "maxActApprox": max_act, "hasVector": has_vector,
            "vector": feature.get("vector", []), "vectorLabel": None,
            "vectorDefaultSteerStrength": max_act if has_vector else 10, "hookName": hook_name,
            "topkCosSimIndices": [], "topkCosSimValues": [], **{k: feature[k] for k in keys}, "sourceSetName": None}


def activation_rows(feature: dict, *, model_id: str, source_id: str, creator_id: str, created: str) -> list[dict]:
    """One Activation row per example of a SAEDashboard batch feature (`_process_batch`)."""
    rows = []
    for slot, act in enumerate(feature["activations"]):
        values = act["values"]
        top = max(values)
        rows.append({
            "id": row_id(model_id, source_id, feature["feature_index"], slot), "tokens": act["tokens"],
            "index": str(feature["feature_index"]), "layer": source_id, "modelId": model_id, "maxValue": top,
            "maxValueTokenIndex": values.index(top), "minValue": min(values), "values": values,
            "creatorId": creator_id, "dataSource": None, "dataIndex": None, "dfaValues": [], "dfaTargetIndex": None,
            "dfaMaxValue": None, "createdAt": created, "lossValues": [], "logitContributions": None,
            "binMin": act["bin_min"], "binMax": act["bin_max"], "binContains": act["bin_contains"],
            "qualifyingTokenIndex": act["qualifying_token_index"], "zIndices": None, "zValues": None,
        })
    return rows


def explanation_row(feature: int, entry: dict, *, model_id: str, source_id: str, creator_id: str,
                    explainer_model: str, type_name: str, created: str) -> dict:
    """Explanation row (neuronpedia-utils' db_models Explanation) of one sae-kit explanation; the
    scores go into notes."""
    scores = [f"{kind} balanced accuracy {entry[kind]['balanced_accuracy']:.3f} (n={entry[kind]['n']})"
              for kind in ("detection", "fuzzing")
              if isinstance(entry.get(kind), dict) and entry[kind].get("balanced_accuracy") is not None]
    return {"id": row_id(model_id, source_id, feature, "explanation"), "modelId": model_id, "layer": source_id,
            "index": str(feature), "description": entry["explanation"], "authorId": creator_id, "embedding": None,
            "triggeredById": None, "typeName": type_name, "explanationModelName": explainer_model,
            "notes": "; ".join(scores) or None, "createdAt": created}
