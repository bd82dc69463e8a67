"""Sparse probing: tasks built as SAEBench builds them, k-sparse probes on synthetic features with a
known answer, and mean pooling of a real tiny Llama's activations checked token by token."""

from __future__ import annotations

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.evaluation.probing import (
    dense_accuracies,
    k_sparse_accuracies,
    pooled_activations,
    probing_result,
    raw_probe_results,
    tokenize_texts,
    top_k_mean_difference,
)
from sae_kit.evaluation.tasks import HUB_DATASETS, ProbeTask, ProbeTasks, build_tasks, load_hub_dataset
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model


def synthetic(n=200, F=12, indicator=3, seed=0):
    """Features [n, F] of noise in which latent `indicator` is exactly the class label."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).long()[torch.randperm(n, generator=g)]
    features = torch.rand(n, F, generator=g)
    features[:, indicator] = labels.float()
    return features, labels


def task_of(labels, name="t", dataset="d", split=0.7):
    n = len(labels)
    cut = int(split * n)
    return ProbeTask(name=name, dataset=dataset, train=tuple(range(cut)), train_labels=tuple(labels[:cut].tolist()),
                     test=tuple(range(cut, n)), test_labels=tuple(labels[cut:].tolist()))


def test_a_latent_that_is_the_class_indicator_gives_accuracy_one_at_k_1():
    features, labels = synthetic()
    task = task_of(labels)
    assert top_k_mean_difference(features[list(task.train)], torch.tensor(task.train_labels), 1).tolist() == [3]
    acc = k_sparse_accuracies(features, [task], (1, 2, 5))["t"]
    assert acc == {1: 1.0, 2: 1.0, 5: 1.0}
    # without the indicator, noise features are at chance (well below 1)
    noise = k_sparse_accuracies(torch.cat([features[:, :3], features[:, 4:]], 1), [task], (1,))["t"][1]
    assert noise < 0.75


def test_mean_difference_uses_the_absolute_difference_and_caps_k():
    features = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    labels = torch.tensor([1, 1, 0, 0])  # |Δ| = 1, 5, 0
    assert top_k_mean_difference(features, labels, 2).tolist() == [1, 0]
    assert top_k_mean_difference(features, labels, 10).tolist() == [1, 0, 2]


def test_results_average_tasks_per_dataset_then_datasets():
    features, labels = synthetic(F=6)
    tasks = ProbeTasks(texts=[str(i) for i in range(len(labels))],
                       tasks=[task_of(labels, "a1", "A"), task_of(1 - labels, "a2", "A"), task_of(labels, "b1", "B")])
    noise = torch.rand(len(labels), 6, generator=torch.Generator().manual_seed(1))
    raw = raw_probe_results(type("P", (), {"raw": noise})(), tasks, (1, 2))
    result = probing_result(features, tasks, (1, 2), raw, torch.ones(len(labels)))
    per_task = result["tasks"]
    for dataset, names in (("A", ("a1", "a2")), ("B", ("b1",))):
        expected = sum(per_task[n]["llm_test_accuracy"] for n in names) / len(names)
        assert result["datasets"][dataset]["llm_test_accuracy"] == pytest.approx(expected)
    assert result["mean"]["llm_top_2_test_accuracy"] == pytest.approx(
        (result["datasets"]["A"]["llm_top_2_test_accuracy"] + result["datasets"]["B"]["llm_top_2_test_accuracy"]) / 2)
    assert result["mean"]["sae_top_1_test_accuracy"] == 1.0
    assert set(per_task["a1"]) >= {"sae_top_1_test_accuracy", "llm_test_accuracy", "llm_top_1_test_accuracy", "n_train"}


def test_dense_probe_on_all_features_finds_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 10, generator=g)
    labels = (X[:, 2] - X[:, 7] > 0).long()
    assert dense_accuracies(X, [task_of(labels)])["t"] > 0.95


def test_one_vs_rest_tasks_are_balanced_and_disjoint():
    classes = {c: [f"{c}-{i}" for i in range(n)] for c, n in (("x", 30), ("y", 40), ("z", 50))}
    tasks = ProbeTasks()
    tasks.add_dataset("toy", {c: v[:20] for c, v in classes.items()}, {c: v[20:] for c, v in classes.items()}, seed=0)
    assert [t.name for t in tasks.tasks] == ["toy=x", "toy=y", "toy=z"]
    for task in tasks.tasks:
        positive = task.name.split("=")[1]
        train = [tasks.texts[i] for i in task.train]
        assert sum(task.train_labels) == 20 and len(train) == 40  # as many negatives as positives
        assert all(t.startswith(positive) == bool(y) for t, y in zip(train, task.train_labels))
        others = {t.split("-")[0] for t, y in zip(train, task.train_labels) if not y}
        assert others == set(classes) - {positive}  # negatives from every other class
        assert not set(task.train) & set(task.test)
    two = ProbeTasks()
    two.add_dataset("bin", {"a": ["a1", "a2"], "b": ["b1", "b2"]}, {"a": ["a3"], "b": ["b3"]}, seed=0)
    assert [t.name for t in two.tasks] == ["bin=a"]  # a two-class dataset is one task


def test_python_docs_tasks_are_built_offline():
    tasks = build_tasks(("python-docs",), 40, 20, seed=0)
    names = [t.name for t in tasks.tasks]
    assert len([n for n in names if n.startswith("python-docs/package=")]) == 5
    assert "python-docs/prose-vs-code=code" in names
    code = next(t for t in tasks.tasks if t.name.endswith("=code"))
    assert len(code.train) == 40 and sum(code.train_labels) == 20 and len(code.test) == 20
    snippet = next(tasks.texts[i] for i, y in zip(code.train, code.train_labels) if y)
    assert "def " in snippet or "return" in snippet or "=" in snippet
    assert len(set(tasks.texts)) == len(tasks.texts)  # each text once


def test_hub_datasets_fail_clearly_offline():
    assert {"LabHC/bias_in_bios_class_set1", "fancyzhx/ag_news", "Helsinki-NLP/europarl",
            "codeparrot/github-code"} <= set(HUB_DATASETS)
    with pytest.raises(SaeKitError, match="could not load probing dataset 'fancyzhx/ag_news'.*python-docs"):
        load_hub_dataset("fancyzhx/ag_news", 10, 10, 0)
    with pytest.raises(SaeKitError, match="unknown probing dataset"):
        build_tasks(("no/such-dataset",), 10, 10)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    return loaded, resolve_hooks(loaded.model, ["resid.1"])[0]


def test_mean_pooling_matches_each_text_run_alone(llama):
    loaded, module = llama
    texts = ["Return the value of the key.", "A much longer text about sockets, files and the operating system.",
             "x"]
    ids = tokenize_texts(loaded.tokenizer, texts, context_len=12, prepend_bos=True)
    assert all(row[0] == loaded.tokenizer.bos_token_id and len(row) <= 12 for row in ids)
    torch.manual_seed(0)
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=40)).eval()
    pooled = pooled_activations(loaded.model, module, ids, {"sae": sae}, prepend_bos=True, batch_size=2, pad_id=7)
    for i, row in enumerate(ids):
        hidden = run_to_hooks(loaded.model, torch.tensor([row]), [module])[module][0, 1:]  # BOS left out
        assert torch.allclose(pooled.raw[i], hidden.mean(0), atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(pooled.latents["sae"][i], sae.encode(hidden).mean(0), atol=1e-5)
        assert pooled.n_tokens[i] == len(row) - 1
