"""`sae-kit explain` end to end: against a real local HTTP chat server (the OpenAI-compatible path)
and a tiny random chat model (the transformers path), on the tiny analysis."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from sae_kit.analysis import load_analysis, load_explanations, select_features
from sae_kit.analysis.autointerp import ExplainConfig, TransformersChat, explain_features
from sae_kit.analysis.autointerp.scores import roc_auc
from sae_kit.autoencoders import load_autoencoder
from sae_kit.cli import main
from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore
from tests.analysis.chat_stub import ChatStub, marker_of, says_yes

CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
                 "{% if add_generation_prompt %}<bos>assistant\n{% endif %}")


@pytest.fixture
def analysis_copy(tiny_analysis, tmp_path) -> Path:
    """A private copy of the tiny analysis (explain writes into the analysis directory)."""
    return Path(shutil.copytree(tiny_analysis.path, tmp_path / "A"))


@pytest.fixture(scope="module")
def features(tiny_analysis) -> list[int]:
    """Three features that fire often enough for held-out and non-activating excerpts."""
    return select_features(tiny_analysis, min_density=0.005, max_density=0.05, limit=3)


@pytest.fixture(scope="module")
def tiny_chat_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny random Llama with a chat template added to its tokenizer."""
    from transformers import AutoTokenizer

    path = Path(shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("chat") / "tiny-chat"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def stub_config(analysis_dir, features, stub, **changes) -> ExplainConfig:
    base = dict(analysis=str(analysis_dir), features=",".join(map(str, features)), explainer_url=stub.url,
                explainer_model="stub-model")
    return ExplainConfig(**{**base, **changes})


def audit(analysis_dir, feature) -> dict:
    return json.loads((Path(analysis_dir) / "autointerp" / f"feature-{feature}.json").read_text())


def test_endpoint_scores_equal_the_hand_computed_balanced_accuracy(analysis_copy, features, monkeypatch):
    monkeypatch.setenv("SAE_KIT_TEST_KEY", "secret-123")
    with ChatStub() as stub:
        cfg = stub_config(analysis_copy, features, stub, api_key_env="SAE_KIT_TEST_KEY", seed=7)
        payload = explain_features(cfg, progress=False)
    assert payload["explainer"] == {"kind": "openai", "model": "stub-model", "url": stub.url}
    assert sorted(map(int, payload["features"])) == features
    assert all(r["model"] == "stub-model" and r["temperature"] == 0.0 and r["seed"] == 7 for r in stub.requests)
    assert all(h["authorization"] == "Bearer secret-123" for h in stub.headers)
    for f in features:
        record = audit(analysis_copy, f)
        marker = marker_of("Description: " + record["explanation"]["text"])
        assert marker is not None and record["explanation"]["parsed_from"] == "label"
        for kind in ("detection", "fuzzing"):
            samples = record[kind]["samples"]
            # the stub's verdicts, recomputed from the saved texts, and ½ (TP/P + TN/N) by hand
            expected = [says_yes(marker, s["text"]) for s in samples]
            assert [s["prediction"] for s in samples] == expected
            pos = [e for s, e in zip(samples, expected) if s["label"]]
            neg = [e for s, e in zip(samples, expected) if not s["label"]]
            by_hand = 0.5 * (sum(pos) / len(pos) + (len(neg) - sum(neg)) / len(neg))
            assert payload["features"][str(f)][kind]["balanced_accuracy"] == pytest.approx(by_hand)
            assert record[kind]["balanced_accuracy"] == pytest.approx(by_hand)
            assert payload["features"][str(f)][kind]["n"] == len(samples)
            assert sum(s["label"] for s in samples) == len(neg) == cfg.n_test  # balanced
            assert len(record[kind]["queries"]) == len(samples)  # one excerpt per prompt
    assert load_explanations(analysis_copy) == {int(k): v for k, v in payload["features"].items()}


def test_held_out_and_non_activating_excerpts_are_what_they_claim(analysis_copy, features):
    with ChatStub() as stub:
        explain_features(stub_config(analysis_copy, features[:1], stub), progress=False)
    f = features[0]
    analysis = load_analysis(analysis_copy)
    record = audit(analysis_copy, f)
    bands = set(analysis.band_indices[f].reshape(-1).tolist()) - {-1}
    shown = [e["center"] for e in record["explanation"]["examples"]]
    assert shown[:6] == analysis.top_indices[f][:6].tolist()  # the top examples first
    store = ActivationStore(analysis.store)
    sae = load_autoencoder(analysis.run)
    for s in record["detection"]["samples"]:
        if s["label"]:
            assert s["center"] in bands and s["center"] not in shown
            assert s["max_activation"] > 0
        else:  # re-encode the window's store rows: the feature is silent on every shown token
            rows = torch.arange(max(0, s["center"] - 12), min(store.n_tokens, s["center"] + 5))
            got = store.gather(analysis.hook, rows)
            centre_context = store.gather(None, torch.tensor([s["center"]]))["context"][0]
            keep = (got["context"] == centre_context) & (got["position"] > 0)
            with torch.no_grad():
                z = sae.encode(got["acts"][keep])[:, f]
            assert torch.all(z == 0) and keep.sum() >= len(s["tokens"])
            assert all(a == 0 for a in s["activations"])


def test_lists_of_numbers_and_logprobs_reach_the_same_verdicts(analysis_copy, features, tmp_path):
    with ChatStub() as stub:
        one = explain_features(stub_config(analysis_copy, features, stub), progress=False)
        singles = {f: audit(analysis_copy, f) for f in features}
        many = explain_features(stub_config(analysis_copy, features, stub, examples_per_prompt=3, overwrite=True),
                                progress=False)
        grouped = {f: audit(analysis_copy, f) for f in features}
        probs = explain_features(stub_config(analysis_copy, features, stub, answer="logprobs", overwrite=True),
                                 progress=False)
    for f in features:
        for kind in ("detection", "fuzzing"):
            a, b = singles[f][kind], grouped[f][kind]
            assert sorted((s["text"], s["prediction"]) for s in a["samples"]) == \
                   sorted((s["text"], s["prediction"]) for s in b["samples"])
            assert len(b["queries"]) == -(-len(b["samples"]) // 3)
            assert many["features"][str(f)][kind]["balanced_accuracy"] == one["features"][str(f)][kind]["balanced_accuracy"]
            assert probs["features"][str(f)][kind]["balanced_accuracy"] == one["features"][str(f)][kind]["balanced_accuracy"]
        record = audit(analysis_copy, f)["detection"]
        labels = [s["label"] for s in record["samples"]]
        assert [s["p_yes"] for s in record["samples"]] == pytest.approx(
            [0.9 if s["prediction"] else 0.1 for s in record["samples"]])
        assert probs["features"][str(f)]["detection"]["auc"] == pytest.approx(
            roc_auc(labels, [s["p_yes"] for s in record["samples"]]))


@pytest.mark.parametrize("mode, expected", [("always-yes", 0.5), ("garbage", None)])
def test_known_scores_of_trivial_scorers(analysis_copy, features, mode, expected):
    with ChatStub(mode=mode) as stub:
        payload = explain_features(stub_config(analysis_copy, features[:1], stub), progress=False)
    entry = payload["features"][str(features[0])]
    for kind in ("detection", "fuzzing"):
        assert entry[kind]["balanced_accuracy"] == expected
        assert entry[kind]["n_unparsed"] == (entry[kind]["n"] if mode == "garbage" else 0)
    if mode == "garbage":  # every unreadable answer is kept for the audit
        queries = audit(analysis_copy, features[0])["detection"]["queries"]
        assert {q["answer"] for q in queries} == {"hmm"} and all(q["parsed"] is None for q in queries)


def test_resume_skips_explained_features_and_overwrite_repeats_them_exactly(analysis_copy, features):
    with ChatStub() as stub:
        first = explain_features(stub_config(analysis_copy, features[:2], stub), progress=False)
        calls = len(stub.requests)
        again = explain_features(stub_config(analysis_copy, features, stub), progress=False)
        assert sorted(map(int, again["features"])) == features
        per_feature = calls // 2
        assert len(stub.requests) == calls + per_feature  # only the third feature was asked about
        redo = explain_features(stub_config(analysis_copy, features[:2], stub, overwrite=True), progress=False)
        assert {k: redo["features"][k] for k in first["features"]} == first["features"]  # deterministic
        with pytest.raises(SaeKitError, match="written with explainer"):
            explain_features(stub_config(analysis_copy, features, stub, explainer_model="another"), progress=False)
        fresh = explain_features(stub_config(analysis_copy, features[:1], stub, explainer_model="another",
                                             overwrite=True), progress=False)
    assert list(fresh["features"]) == [str(features[0])] and fresh["explainer"]["model"] == "another"


def test_cli_explain_prints_the_mean_scores(analysis_copy, features, capsys):
    with ChatStub() as stub:
        code = main(["explain", "--analysis", str(analysis_copy), "--features", ",".join(map(str, features)),
                     "--explainer-url", stub.url, "--explainer-model", "stub-model", "--n-test", "4",
                     "--scorers", "detection"])
    out = capsys.readouterr().out
    assert code == 0 and "3 features explained" in out and "detection: mean balanced accuracy" in out
    entries = load_explanations(analysis_copy)
    assert all("fuzzing" not in e and e["detection"]["n"] <= 8 for e in entries.values())
    assert main(["explain", "--analysis", str(analysis_copy)]) == 1
    assert "--features" in capsys.readouterr().err


def test_missing_openai_package_says_what_to_install(analysis_copy, features, monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(SaeKitError, match="pip install openai"):
        explain_features(ExplainConfig(analysis=str(analysis_copy), features="1", explainer_url="http://127.0.0.1:9/v1",
                                       explainer_model="m"), progress=False)


def test_unreachable_endpoint_is_one_clear_error(analysis_copy, features):
    cfg = ExplainConfig(analysis=str(analysis_copy), features=str(features[0]), explainer_url="http://127.0.0.1:9/v1",
                        explainer_model="m", timeout=2.0)
    with pytest.raises(SaeKitError, match="cannot reach the endpoint"):
        explain_features(cfg, progress=False)


# ----------------------------------------------------------------------------- local transformers path


class CountingChat(TransformersChat):
    calls = 0

    def generate(self, conversations, max_new_tokens, prefix=None):
        CountingChat.calls += len(conversations)
        return super().generate(conversations, max_new_tokens, prefix=prefix)

    def yes_probability(self, conversations):
        CountingChat.calls += len(conversations)
        return super().yes_probability(conversations)


def test_local_chat_model_end_to_end(analysis_copy, features, tiny_chat_dir):
    chat = CountingChat(str(tiny_chat_dir), device="cpu", batch_size=4)
    cfg = ExplainConfig(analysis=str(analysis_copy), features=",".join(map(str, features[:2])),
                        explainer_model=str(tiny_chat_dir), answer="logprobs", n_test=2, explain_top=3,
                        explain_per_band=1, before=6, after=2, max_new_tokens=8)
    payload = explain_features(cfg, explainer=chat, scorer=chat, progress=False)
    assert payload["explainer"] == {"kind": "transformers", "model": str(tiny_chat_dir), "url": None}
    assert sorted(map(int, {**payload["features"], **payload["unexplained"]})) == features[:2]
    for f in features[:2]:
        record = audit(analysis_copy, f)
        assert record["explanation"]["messages"][-1]["content"].startswith("Excerpt 1:")
        assert record["explanation"]["answer"].startswith("Explanation:")  # the local answer is prefilled
        if str(f) in payload["unexplained"]:  # a random model may write nothing readable; that is recorded
            assert record["explanation"]["text"] is None
            continue
        entry = payload["features"][str(f)]
        assert isinstance(entry["explanation"], str) and entry["explanation"]
        for kind in ("detection", "fuzzing"):
            assert 0.0 <= entry[kind]["balanced_accuracy"] <= 1.0 and entry[kind]["n_unparsed"] == 0
            assert 0.0 <= entry[kind]["auc"] <= 1.0
            assert all(0.0 <= q["p_yes"] <= 1.0 for q in record[kind]["queries"])
    assert load_explanations(analysis_copy) == {int(k): v for k, v in payload["features"].items()}
    before = CountingChat.calls
    again = explain_features(cfg, explainer=chat, scorer=chat, progress=False)
    assert CountingChat.calls == before and again["features"] == payload["features"]  # resumed: nothing to do
    one = cfg.replace(features=str(features[0]), overwrite=True)
    redo = explain_features(one, explainer=chat, scorer=chat, progress=False)
    assert CountingChat.calls > before
    assert redo["features"] == payload["features"]  # greedy and seeded: the same again


def test_local_text_answers_from_a_random_model_are_recorded_as_unreadable(analysis_copy, features, tiny_chat_dir):
    chat = TransformersChat(str(tiny_chat_dir), device="cpu")
    cfg = ExplainConfig(analysis=str(analysis_copy), features=str(features[0]), explainer_model=str(tiny_chat_dir),
                        n_test=2, explain_top=3, explain_per_band=1, before=6, after=2, max_new_tokens=8,
                        scorers=("detection",))
    payload = explain_features(cfg, explainer=chat, scorer=chat, progress=False)
    record = audit(analysis_copy, features[0])
    if record["explanation"]["text"] is None:
        assert str(features[0]) in payload["unexplained"]
        return
    detection = record["detection"]
    parsed = [q["parsed"] is not None for q in detection["queries"]]
    assert detection["n_unparsed"] == parsed.count(False)
    ba = detection["balanced_accuracy"]
    assert ba is None or 0.0 <= ba <= 1.0


def test_batched_yes_probability_matches_one_conversation_at_a_time(tiny_chat_dir):
    """Left padding in a batch gives the same P(yes) as each conversation alone (plain path)."""
    batched = TransformersChat(str(tiny_chat_dir), device="cpu", batch_size=3)
    conversations = [[{"role": "user", "content": text}] for text in ("a", "a much longer question here", "mid one")]
    together = batched.yes_probability(conversations)
    batched.batch_size = 1
    alone = batched.yes_probability(conversations)
    for (p, mass), (q, mass_alone) in zip(together, alone):
        assert p == pytest.approx(q, abs=1e-4) and mass == pytest.approx(mass_alone, abs=1e-5)
    # P(yes)/(P(yes)+P(no)) from the logits by hand, for the first conversation
    lm = batched.lm
    text = lm.tokenizer.apply_chat_template(conversations[0], tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = lm.model(ids).logits[0, -1].softmax(-1)
    p_yes, p_no = probs[batched.yes_no_ids[True]].sum(), probs[batched.yes_no_ids[False]].sum()
    assert alone[0][0] == pytest.approx(float(p_yes / (p_yes + p_no)), abs=1e-5)


def test_a_tokenizer_without_chat_template_is_refused(tiny_llama_dir):
    with pytest.raises(SaeKitError, match="chat template"):
        TransformersChat(str(tiny_llama_dir), device="cpu")


@pytest.mark.parametrize("arch", ["sae", "topk"])
def test_random_windows_activations_match_a_plain_encode(tiny_store, arch):
    """The windows' activations (subset encoder) against encode() of the same store rows."""
    from sae_kit.analysis.autointerp.samples import random_windows
    from tests.conftest import HOOK, calibrated_autoencoder

    store = ActivationStore(tiny_store)
    sae = calibrated_autoencoder(tiny_store, arch=arch, k=8 if arch == "topk" else None)
    drawn = random_windows(store, HOOK, 64, 3, 2, seed=1)
    features = [0, 5, 40]
    acts = drawn.activations(sae, features)  # [S, N, W]
    rows, cols = drawn.where
    index = drawn.centers[rows] + cols - 3
    got = store.gather(HOOK, index)
    assert torch.equal(got["tokens"], drawn.tokens[rows, cols]) and torch.all(got["context"] == drawn.contexts[rows])
    with torch.no_grad():
        plain = sae.encode(got["acts"])[:, features]
    assert torch.allclose(acts[:, rows, cols].T, plain, atol=1e-5)
    outside = torch.ones(drawn.tokens.shape, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.all(drawn.tokens[outside] == -1) and torch.isnan(acts[:, outside]).all()
