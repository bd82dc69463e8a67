"""`sae-kit export neuronpedia`: every field name and type against what SAEDashboard and
Neuronpedia's own code write or read, and the values against the analysis they come from."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from types import NoneType

import pytest
import torch

from sae_kit.analysis import load_analysis
from sae_kit.analysis.neuronpedia import activation_histogram, export_neuronpedia, histogram
from sae_kit.autoencoders import load_autoencoder
from sae_kit.cli import main
from sae_kit.harvest import ActivationStore
from sae_kit.lm.tokens import display_tokens

NUMBER = (int, float)
INTS, FLOATS, STRS, ANY = ("list", int), ("list", NUMBER), ("list", str), ("list", object)

# SAEDashboard, sae_dashboard/neuronpedia/neuronpedia_dashboard.py: NeuronpediaDashboardBatch.to_dict()
BATCH = {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": (str, NoneType), "features": ("list", dict)}
# … NeuronpediaDashboardFeature.to_dict(), with the types neuronpedia_converter.py gives them
# (TopK indices are ints, round_list gives floats, histc(...).int() gives integer heights)
DASHBOARD_FEATURE = {
    "feature_index": int, "neuron_alignment_indices": INTS, "neuron_alignment_values": FLOATS,
    "neuron_alignment_l1": FLOATS, "correlated_neurons_indices": INTS, "correlated_neurons_l1": FLOATS,
    "correlated_neurons_pearson": FLOATS, "correlated_features_indices": INTS, "correlated_features_l1": FLOATS,
    "correlated_features_pearson": FLOATS, "neg_str": STRS, "neg_values": FLOATS, "pos_str": STRS,
    "pos_values": FLOATS, "frac_nonzero": float, "freq_hist_data_bar_values": FLOATS,
    "freq_hist_data_bar_heights": INTS, "logits_hist_data_bar_heights": INTS, "logits_hist_data_bar_values": FLOATS,
    "n_prompts_total": int, "n_tokens_in_prompt": int, "dataset": str, "decoder_weights_dist": FLOATS,
    "activations": ("list", dict), "vector": FLOATS,
}
# … NeuronpediaDashboardActivation.to_dict() (dfa_* only when DFA ran)
DASHBOARD_ACTIVATION = {"bin_min": NUMBER, "bin_max": NUMBER, "bin_contains": NUMBER, "tokens": STRS,
                        "values": FLOATS, "qualifying_token_index": int}

# sae_dashboard/neuronpedia/neuronpedia_export.py: the dataclasses its _dump_jsonl writes (row.__dict__),
# which mirror neuronpedia-utils' db_models; datetimes become ISO strings (orjson)
OPT_STR, OPT_NUM, OPT_INT = (str, NoneType), (int, float, NoneType), (int, NoneType)
ACTIVATION_ROW = {
    "id": str, "tokens": STRS, "index": str, "layer": str, "modelId": str, "maxValue": NUMBER,
    "maxValueTokenIndex": int, "minValue": NUMBER, "values": FLOATS, "creatorId": str, "dataSource": OPT_STR,
    "dataIndex": OPT_STR, "dfaValues": FLOATS, "dfaTargetIndex": OPT_INT, "dfaMaxValue": OPT_NUM, "createdAt": str,
    "lossValues": FLOATS, "logitContributions": OPT_STR, "binMin": OPT_NUM, "binMax": OPT_NUM,
    "binContains": OPT_NUM, "qualifyingTokenIndex": OPT_INT, "zIndices": (list, NoneType), "zValues": (list, NoneType),
}
FEATURE_ROW = {
    "modelId": str, "layer": str, "index": str, "creatorId": OPT_STR, "createdAt": str, "maxActApprox": OPT_NUM,
    "hasVector": bool, "vector": FLOATS, "vectorLabel": OPT_STR, "vectorDefaultSteerStrength": OPT_NUM,
    "hookName": OPT_STR, "topkCosSimIndices": INTS, "topkCosSimValues": FLOATS,
    **{k: DASHBOARD_FEATURE[k] for k in (
        "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
        "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices",
        "correlated_features_pearson", "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values",
        "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
        "logits_hist_data_bar_values", "decoder_weights_dist")},
    "sourceSetName": OPT_STR,
}
MODEL_ROW = {"id": str, "instruct": bool, "creatorId": str, "displayNameShort": str, "displayName": str,
             "tlensId": OPT_STR, "dimension": OPT_INT, "visibility": str, "defaultSourceSetName": OPT_STR,
             "defaultSourceId": OPT_STR, "inferenceEnabled": bool, "layers": int, "neuronsPerLayer": int,
             "createdAt": str, "owner": str, "updatedAt": str, "website": OPT_STR}
SOURCE_ROW = {"id": str, "modelId": str, "setName": str, "creatorId": str, "hasDashboards": bool,
              "inferenceEnabled": bool, "inferenceHosts": STRS, "saelensConfig": OPT_STR, "saelensRelease": OPT_STR,
              "saelensSaeId": OPT_STR, "hfRepoId": OPT_STR, "hfFolderId": OPT_STR, "visibility": str,
              "defaultOfModelId": OPT_STR, "hasUmap": bool, "hasUmapLogSparsity": bool, "hasUmapClusters": bool,
              "num_prompts": OPT_INT, "num_tokens_in_prompt": OPT_INT, "dataset": OPT_STR, "notes": OPT_STR,
              "createdAt": str}
RELEASE_ROW = {"name": str, "description": str, "creatorName": str, "creatorId": str, "visibility": str,
               "isNewUi": bool, "featured": bool, "descriptionShort": OPT_STR, "urls": STRS, "creatorEmail": OPT_STR,
               "creatorNameShort": OPT_STR, "defaultSourceSetName": OPT_STR, "defaultSourceId": OPT_STR,
               "defaultUmapSourceIds": STRS, "createdAt": str}
SOURCESET_ROW = {"modelId": str, "name": str, "creatorId": str, "hasDashboards": bool, "visibility": str,
                 "description": str, "type": str, "creatorName": str, "urls": STRS, "creatorEmail": OPT_STR,
                 "releaseName": OPT_STR, "defaultOfModelId": OPT_STR, "defaultRange": int, "defaultShowBreaks": bool,
                 "showDfa": bool, "showCorrelated": bool, "showHeadAttribution": bool, "showUmap": bool,
                 "createdAt": str}
# neuronpedia-utils, neuronpedia_utils/db_models/explanation.py: Explanation (columns of export-data.py's dump)
EXPLANATION_ROW = {"id": str, "modelId": str, "layer": str, "index": str, "description": str, "authorId": str,
                   "embedding": (list, NoneType), "triggeredById": OPT_STR, "typeName": OPT_STR,
                   "explanationModelName": OPT_STR, "notes": OPT_STR, "createdAt": str}


def check(record: dict, schema: dict, where: str) -> None:
    """Exactly the schema's field names, each value of its type (lists: every item)."""
    assert set(record) == set(schema), (where, set(record) ^ set(schema))
    for name, kind in schema.items():
        value = record[name]
        if isinstance(kind, tuple) and kind and kind[0] == "list":
            assert isinstance(value, list), (where, name, value)
            assert all(isinstance(v, kind[1]) and not isinstance(v, bool) for v in value), (where, name, value)
        else:
            assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)
                                                or (isinstance(kind, tuple) and bool in kind)), (where, name, value)


def read_jsonl_gz(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


@pytest.fixture(scope="module")
def exported(tiny_analysis, tmp_path_factory):
    """The tiny analysis with two explained features, exported in batches of 3 (features 10-16)."""
    analysis_dir = Path(shutil.copytree(tiny_analysis.path, tmp_path_factory.mktemp("np") / "A"))
    (analysis_dir / "explanations.json").write_text(json.dumps({
        "format": "sae-kit-explanations", "format_version": 1,
        "explainer": {"kind": "openai", "model": "some-llm", "url": None}, "scorer": {"kind": "openai", "model": "x"},
        "created": "", "config": {}, "features": {
            "11": {"explanation": "a test phrase", "detection": {"balanced_accuracy": 0.75, "n": 20},
                   "fuzzing": {"balanced_accuracy": 0.5, "n": 20}},
            "30": {"explanation": "not exported", "detection": {"balanced_accuracy": 1.0, "n": 2}}}}))
    out = export_neuronpedia(analysis_dir, analysis_dir.parent / "out", features="10-16", batch_size=3,
                             creator_id="creator-1", vectors=True, progress=False)
    return analysis_dir, out


def test_batch_files_have_saedashboards_fields_and_types(exported):
    analysis_dir, out = exported
    batches = sorted((out / "dashboard").glob("batch-*.json"))
    assert [b.name for b in batches] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    features = []
    for path in batches:
        batch = json.loads(path.read_text())
        check(batch, BATCH, path.name)
        model_name = ActivationStore(load_analysis(analysis_dir).store).manifest["model"]["name"]
        assert batch["model_id"] == model_name.lower() and batch["layer"] == 1 and batch["sae_set"] == "sae-kit-sae-48"
        for feature in batch["features"]:
            check(feature, DASHBOARD_FEATURE, f"feature {feature['feature_index']}")
            for act in feature["activations"]:
                check(act, DASHBOARD_ACTIVATION, "activation")
            features.append(feature)
    assert [f["feature_index"] for f in features] == list(range(10, 17))
    skipped = json.loads((out / "dashboard" / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == [i for i in range(48) if not 10 <= i <= 16]


def test_batch_values_come_from_the_analysis(exported):
    analysis_dir, out = exported
    analysis = load_analysis(analysis_dir)
    sae = load_autoencoder(analysis.run)
    tokenizer = analysis.load_tokenizer()
    feature = json.loads((out / "dashboard" / "batch-0.json").read_text())["features"][1]
    f = feature["feature_index"]
    assert f == 11 and feature["frac_nonzero"] == pytest.approx(float(analysis.density[f]))
    names = display_tokens(tokenizer, analysis.promoted_ids[f].tolist(), visible=False)
    assert feature["pos_str"] == [names[int(i)] for i in analysis.promoted_ids[f]]
    assert feature["pos_values"] == pytest.approx(analysis.promoted_logits[f].tolist(), abs=1e-5)
    assert feature["neg_values"] == pytest.approx(analysis.suppressed_logits[f].tolist(), abs=1e-5)
    W = sae.W_dec.detach()[f]
    top = W.topk(3)  # neuron alignment by hand: the 3 largest decoder weights, share of the row's L1 norm
    assert feature["neuron_alignment_indices"] == top.indices.tolist()
    assert feature["neuron_alignment_l1"] == pytest.approx((top.values.abs() / W.abs().sum()).tolist(), abs=1e-5)
    assert feature["vector"] == pytest.approx(W.tolist(), abs=1e-5)
    assert sum(feature["freq_hist_data_bar_heights"]) == int(analysis.fire_count[f])
    assert sum(feature["logits_hist_data_bar_heights"]) == len(tokenizer)  # every vocabulary token
    assert len(feature["logits_hist_data_bar_values"]) == 50
    assert feature["n_tokens_in_prompt"] == 32 and feature["n_prompts_total"] == 8192 // 32
    acts = feature["activations"]
    Q = analysis.n_quantiles
    n_top = int((analysis.top_indices[f] >= 0).sum())
    assert len(acts) == n_top + int((analysis.band_indices[f] >= 0).sum())
    for j, act in enumerate(acts[:n_top]):  # the top group: bin_min −1, bin_max the maximum, bin_contains −1
        assert (act["bin_min"], act["bin_contains"]) == (-1.0, -1.0)
        assert act["bin_max"] == pytest.approx(float(analysis.max_activation[f]), abs=1e-4)
        assert act["values"][act["qualifying_token_index"]] == pytest.approx(float(analysis.top_values[f, j]), abs=1e-4)
        assert len(act["tokens"]) == len(act["values"]) <= 32  # whole contexts, never across them
    bands = acts[n_top:]
    edges = [a["bin_max"] for a in bands]
    assert edges == sorted(edges, reverse=True)  # highest band first, as SAEDashboard orders intervals
    q = Q - 1
    assert bands[0]["bin_min"] == pytest.approx(float(analysis.band_lower[f, q]), abs=1e-4)
    assert bands[0]["bin_contains"] == pytest.approx(float(analysis.band_counts[f, q]) / analysis.n_tokens, abs=1e-6)


def test_upload_layout_has_neuronpedias_fields_and_types(exported):
    analysis_dir, out = exported
    model_id = json.loads((out / "neuronpedia.json").read_text())["model_id"]
    source = out / "export" / model_id / "1-sae-kit-sae-48"
    for name, schema in (("release", RELEASE_ROW), ("model", MODEL_ROW), ("sourceset", SOURCESET_ROW),
                         ("source", SOURCE_ROW)):
        rows = [json.loads(line) for line in (source / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 1
        check(rows[0], schema, name)
    assert json.loads((source / "source.jsonl").read_text())["id"] == "1-sae-kit-sae-48"
    batch = json.loads((out / "dashboard" / "batch-0.json").read_text())
    features = read_jsonl_gz(source / "features" / "batch-0.jsonl.gz")
    activations = read_jsonl_gz(source / "activations" / "batch-0.jsonl.gz")
    assert [r["index"] for r in features] == ["10", "11", "12"]
    for row, dash in zip(features, batch["features"]):
        check(row, FEATURE_ROW, "feature row")
        assert row["layer"] == "1-sae-kit-sae-48" and row["creatorId"] == "creator-1"
        assert row["hookName"] == "blocks.1.hook_resid_post" and row["hasVector"]
        assert row["maxActApprox"] == max(max(a["values"]) for a in dash["activations"])
    assert len(activations) == sum(len(f["activations"]) for f in batch["features"])
    assert len({r["id"] for r in activations}) == len(activations)
    for row in activations:
        check(row, ACTIVATION_ROW, "activation row")
        assert row["maxValue"] == row["values"][row["maxValueTokenIndex"]] == max(row["values"])
    explanations = [r for path in sorted((source / "explanations").glob("*.jsonl.gz")) for r in read_jsonl_gz(path)]
    assert len(explanations) == 1  # feature 30 was explained but not exported
    check(explanations[0], EXPLANATION_ROW, "explanation row")
    assert explanations[0]["description"] == "a test phrase" and explanations[0]["index"] == "11"
    assert explanations[0]["explanationModelName"] == "some-llm" and "0.750" in explanations[0]["notes"]
    manifest = json.loads((out / "neuronpedia.json").read_text())
    assert manifest["format"] == "sae-kit-neuronpedia-export" and manifest["features"] == 7 and manifest["complete"]


def test_histograms_against_hand_computations():
    values, heights = histogram(torch.tensor([0.0, 1.0, 1.0, 4.0]), 4)  # bins of width 1 over [0, 4]
    assert values == [0.5, 1.5, 2.5, 3.5] and heights == [1, 2, 0, 1]
    assert histogram(torch.tensor([]), 4) == ([], [])
    # analysis bins [j, j+1)·upper/H: with upper 8 and H 4 the bins are 2 wide, centres 1, 3, 5, 7
    values, heights = activation_histogram(torch.tensor([0, 3, 0, 2]), 8.0)
    assert values == [3.0, 5.0, 7.0] and heights == [3, 0, 2]
    assert activation_histogram(torch.zeros(4, dtype=torch.long), 0.0) == ([], [])


def test_cli_export_neuronpedia(tiny_analysis, tmp_path, capsys):
    out = tmp_path / "np"
    argv = ["export", "neuronpedia", "--analysis", str(tiny_analysis.path), "--out", str(out), "--top", "2",
            "--no-logits-histogram", "--before", "3", "--after", "1", "--model-id", "my-model", "--source-set", "res-48"]
    assert main(argv) == 0
    assert "bulk-import" in capsys.readouterr().out
    feature = json.loads((out / "dashboard" / "batch-0.json").read_text())["features"][0]
    assert feature["logits_hist_data_bar_heights"] == [] and feature["vector"] == []
    assert all(len(a["tokens"]) <= 5 for a in feature["activations"])
    assert (out / "export" / "my-model" / "1-res-48" / "features" / "batch-0.jsonl.gz").is_file()
    assert main(argv) == 1  # an existing export is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
