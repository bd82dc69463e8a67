"""Sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"; Gao et al. 2024; SAEBench).

Per binary task (`sae_kit.evaluation.tasks`): every text goes through the language model to the
run's hook (stopping there), its token activations x_t [d_in] are encoded by each SAE, and both
are mean-pooled over the text's tokens (BOS and padding left out, as SAEBench masks BOS, pad and
EOS): h = (1/T) Σ_t x_t [d_in] and f = (1/T) Σ_t z_t [d_sae]. Then, on the train texts,

    select the k latents with the largest |mean(f | y = 1) − mean(f | y = 0)|       (SAEBench's
    `get_top_k_mean_diff_mask`), fit an L2 logistic regression (C = 1) on those k, and report its
    test accuracy, for k = 1, 2, 5, 10, 20,

beside the same on the raw activations: a probe on all d_in dimensions of h (the model's own
ceiling: `llm_test_accuracy`) and k-sparse probes on its top-k dimensions (`llm_top_k_…`).
Accuracies are averaged over a dataset's tasks, then over datasets (SAEBench's averaging).
Names follow SAEBench's output: `sae_top_{k}_test_accuracy`, `llm_test_accuracy`,
`llm_top_{k}_test_accuracy`. Not computed: SAEBench's optional probe on all d_sae latents.

One language-model pass serves every model of a sweep: the pooled activations of all models are
accumulated from the same batch of hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_kit.evaluation.logistic import accuracy, fit_padded
from sae_kit.evaluation.tasks import ProbeTask, ProbeTasks
from sae_kit.lm.corpus import special_token_ids
from sae_kit.lm.hooks import run_to_hooks


@dataclass
class PooledActivations:
    """Mean-pooled activations of every text."""

    raw: torch.Tensor
    """[n_texts, d_in] mean of the hook's activations over each text's tokens."""
    latents: dict[str, torch.Tensor]
    """model name -> [n_texts, d_sae] mean of its latents over the same tokens."""
    n_tokens: torch.Tensor
    """[n_texts] tokens pooled per text."""


def tokenize_texts(tokenizer, texts: list[str], context_len: int, prepend_bos: bool) -> list[list[int]]:
    """Token ids of each text, BOS first when the store prepends it, cut to `context_len` tokens."""
    bos, _ = special_token_ids(tokenizer)
    body = context_len - 1 if prepend_bos else context_len
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [([bos] if prepend_bos else []) + list(row[:body]) for row in ids]


@torch.no_grad()
def pooled_activations(lm, module_name: str, token_ids: list[list[int]], models: dict, prepend_bos: bool,
                       batch_size: int = 16, pad_id: int = 0) -> PooledActivations:
    """Mean-pool the hook's activations and each model's latents over every text's tokens.

    token_ids: per text (BOS first when `prepend_bos`, which is then not pooled). Batches are
    right-padded: in a causal LM no real token attends to the padding after it, so no attention
    mask is needed, and padded positions are left out of the means.
    """
    device = next(lm.parameters()).device
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))  # similar lengths together
    first = 1 if prepend_bos else 0
    raw, latents, counts = None, {}, torch.zeros(len(token_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, i in enumerate(rows):
            ids[r, : len(token_ids[i])] = torch.tensor(token_ids[i])
            mask[r, first : len(token_ids[i])] = True
        hidden = run_to_hooks(lm, ids.to(device), [module_name])[module_name].float()  # [b, L, d_in]
        mask = mask.to(hidden.device)
        n = mask.sum(1).clamp_min(1).float()  # [b]
        tokens = hidden[mask]  # [Σ T, d_in]
        owner = mask.nonzero()[:, 0]  # which row each pooled token belongs to
        index = torch.tensor(rows)
        if raw is None:
            raw = torch.zeros(len(token_ids), hidden.shape[-1])
        raw[index] = (_segment_sum(tokens, owner, len(rows)) / n[:, None]).cpu()
        for name, model in models.items():
            z = model.encode(tokens.to(model.W_dec.device, model.W_dec.dtype)).float()
            if name not in latents:
                latents[name] = torch.zeros(len(token_ids), z.shape[-1])
            latents[name][index] = (_segment_sum(z, owner.to(z.device), len(rows)) / n.to(z.device)[:, None]).cpu()
        counts[index] = mask.sum(1).float().cpu()
    return PooledActivations(raw if raw is not None else torch.zeros(0, 0), latents, counts)


def _segment_sum(values: torch.Tensor, owner: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Σ of values [m, d] per row id in owner [m] -> [n_rows, d]."""
    out = torch.zeros(n_rows, values.shape[-1], dtype=values.dtype, device=values.device)
    return out.index_add_(0, owner, values)


def top_k_mean_difference(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k features with the largest |mean(f | y=1) − mean(f | y=0)| (ties: lower
    index first). features [n, F], labels [n] -> [min(k, F)]."""
    y = labels.bool()
    difference = (features[y].mean(0) - features[~y].mean(0)).abs()
    return torch.sort(difference, descending=True, stable=True).indices[: min(k, features.shape[1])]


def _task_tensors(features: torch.Tensor, task: ProbeTask):
    return (features[list(task.train)], torch.tensor(task.train_labels),
            features[list(task.test)], torch.tensor(task.test_labels))


def k_sparse_accuracies(features: torch.Tensor, tasks: list[ProbeTask], ks: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Test accuracy of k-sparse probes for every task and k (all fitted in one batch).
    features [n_texts, F] -> {task name: {k: accuracy}}."""
    problems, keys = [], []
    for task in tasks:
        x_train, y_train, x_test, y_test = _task_tensors(features, task)
        chosen = top_k_mean_difference(x_train, y_train, max(ks))
        for k in ks:
            problems.append((x_train[:, chosen[:k]], y_train))
            keys.append((task, k, chosen[:k]))
    fits = fit_padded(problems)
    out: dict[str, dict[int, float]] = {}
    for (task, k, chosen), (coef, intercept) in zip(keys, fits):
        _, _, x_test, y_test = _task_tensors(features, task)
        out.setdefault(task.name, {})[k] = accuracy(x_test[:, chosen].double() @ coef + intercept, y_test)
    return out


def dense_accuracies(features: torch.Tensor, tasks: list[ProbeTask]) -> dict[str, float]:
    """Test accuracy of a probe on all features of each task: {task name: accuracy}."""
    rows = [_task_tensors(features, task) for task in tasks]
    fits = fit_padded([(x_train, y_train) for x_train, y_train, _, _ in rows])
    return {task.name: accuracy(x_test.double() @ coef + intercept, y_test)
            for task, (_, _, x_test, y_test), (coef, intercept) in zip(tasks, rows, fits)}


def raw_probe_results(pooled: PooledActivations, tasks: ProbeTasks, ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Per task: llm_test_accuracy and llm_top_{k}_test_accuracy (shared by every model)."""
    dense = dense_accuracies(pooled.raw, tasks.tasks)
    sparse = k_sparse_accuracies(pooled.raw, tasks.tasks, ks)
    return {name: {"llm_test_accuracy": dense[name], **{f"llm_top_{k}_test_accuracy": sparse[name][k] for k in ks}}
            for name in dense}


def probing_result(latents: torch.Tensor, tasks: ProbeTasks, ks: tuple[int, ...], raw: dict[str, dict[str, float]],
                   n_tokens: torch.Tensor) -> dict:
    """One model's probing result: per task, per dataset (mean of its tasks) and the mean over datasets."""
    sparse = k_sparse_accuracies(latents, tasks.tasks, ks)
    per_task = {task.name: {**raw[task.name], **{f"sae_top_{k}_test_accuracy": sparse[task.name][k] for k in ks},
                            "n_train": len(task.train), "n_test": len(task.test)} for task in tasks.tasks}
    datasets: dict[str, dict[str, float]] = {}
    for dataset in dict.fromkeys(task.dataset for task in tasks.tasks):
        rows = [per_task[t.name] for t in tasks.tasks if t.dataset == dataset]
        datasets[dataset] = _mean_of(rows)
    return {"k": list(ks), "n_texts": len(tasks.texts), "mean_tokens_per_text": float(n_tokens.mean()),
            "mean": _mean_of(list(datasets.values())), "datasets": datasets, "tasks": per_task}


def _mean_of(rows: list[dict]) -> dict[str, float]:
    keys = [k for k in rows[0] if k.endswith("accuracy")]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}
