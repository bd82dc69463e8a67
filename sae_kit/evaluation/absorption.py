"""Feature absorption on the first-letter task (Chanin et al. 2024, arXiv 2409.14507; SAEBench).

1. Words: the vocabulary's single tokens that are purely alphabetic (an optional leading space
   allowed), as SAEBench's `get_alpha_tokens`; a seeded sample of them, split 80 / 20 into train
   and test words. Each word sits at the end of SAEBench's in-context prompt: ten other words of
   its split as "{word} has the first letter: {L}" lines, then the word. The activation x [d_in]
   at the word's position is read at the run's hook. (SAEBench reads the same position in a prompt
   that goes on with " has the first letter:"; in a causal LM those later tokens cannot change it,
   so they are not run.) Prompts are built from token ids, so the word is exactly one token.
2. Ground truth: an L2 logistic-regression probe per letter on x (one-vs-rest, class-balanced),
   trained on the train words; letters whose test F1 ≤ 0.6 are left out (SAEBench's
   `min_GT_probe_f1`). p̂ = w_L / ‖w_L‖ is the letter's probe direction.
3. Main latents (k-sparse probing): the latents ranked by mean(z | L) − mean(z | not L) on the
   train words; a class-balanced probe on the top k for k = 1 … 10, and the main latents are the
   top k for the last k whose test F1 rose by ≥ 0.03 over k − 1 (SAEBench's feature-splitting rule).
4. On the test words of letter L that the probe gets right (score > 0): the probe projection
   a = x·p̂, each latent's contribution c_i = z_i (W_dec[i]·p̂) and cos_i = cos(W_dec[i], p̂);
   - full absorption: every main latent is silent (z ≤ 1e-8), the top-contributing latent has
     cos ≥ 0.025, a > 0 and c_top / a ≥ 0.4;
   - absorption fraction: with A = Σ of the ≤ 3 largest positive c_i of non-main latents with
     cos_i ≥ 0.1 and M = Σ_{main} c_i: 0 if M ≥ a or A / a < 0.4; 1 if M ≤ 0; otherwise
     min(A, a − M) / (min(A, a − M) + M);
   per letter full_absorption_rate = (fully absorbed) / (probe true positives) and
   mean_absorption_fraction; the scores average them over letters (SAEBench's
   `mean_full_absorption_score`, `mean_absorption_fraction_score`).

Where this differs from SAEBench: the main latents are ranked by class-mean difference (SAEBench
ranks by the weights of an L1-regularised probe on all latents); the probes are exact L2
logistic regressions (SAEBench: Adam on BCE with weight decay); c_i = z_i (W_dec[i]·p̂) is the
latent's actual contribution along p̂ (SAEBench multiplies z_i by the cosine, the same for
unit-norm decoders); a sample of the vocabulary (`--absorption-words`) instead of all of it; and
when fewer than 20 letters qualify (SAEBench then reports nothing) the result says so instead.
"""

from __future__ import annotations

import random
import statistics
import string
from dataclasses import dataclass

import torch

from sae_kit.errors import SaeKitError
from sae_kit.evaluation.logistic import balanced_weights, f1_score, fit_logistic, fit_padded
from sae_kit.lm.corpus import special_token_ids
from sae_kit.lm.hooks import run_to_hooks

LETTERS = string.ascii_lowercase
TEMPLATE = " has the first letter:"
FULL_ABSORPTION_COS = 0.025
FRACTION_COS = 0.1
PROJECTION_PROPORTION = 0.4
MAX_ABSORBERS = 3
SILENT = 1e-8
F1_JUMP = 0.03
SAEBENCH_MIN_LETTERS = 20
MIN_TRAIN_WORDS = 4
"""A letter is probed only with at least this many train words and one test word."""


@dataclass
class FirstLetterData:
    """What every model shares: words, their activations and the ground-truth probes."""

    train_words: list[str]
    test_words: list[str]
    train_x: torch.Tensor
    """[n_train, d_in] activations at the word positions."""
    test_x: torch.Tensor
    train_y: torch.Tensor
    """[n_train] letter index (0 = a)."""
    test_y: torch.Tensor
    letters: list[int]
    """Letters with a probe (enough words)."""
    probe_coef: torch.Tensor
    """[len(letters), d_in] probe weights."""
    probe_intercept: torch.Tensor
    probe_f1: dict[str, float]
    n_vocabulary: int
    """Single-token alphabetic words in the whole vocabulary."""


def alphabetic_vocabulary(tokenizer) -> list[tuple[int, str]]:
    """(token id, text) of every non-special token that is letters only, after one optional leading space."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    out = []
    for token_id, text in zip(ids, texts):
        word = text[1:] if text.startswith(" ") else text
        if word and all(c in string.ascii_letters for c in word):
            out.append((token_id, text))
    return out


def _letter(text: str) -> int:
    return LETTERS.index(text.strip()[0].lower())


def prompt_pieces(tokenizer) -> dict:
    """Token ids of the fixed parts of a first-letter prompt: BOS, newline, the template, each answer."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return {"bos": special_token_ids(tokenizer)[0], "newline": ids("\n"), "template": ids(TEMPLATE),
            "answers": {letter: ids(" " + letter.upper()) for letter in LETTERS}}


def prompt_ids(pieces: dict, word_id: int, examples: list[tuple[int, str]], prepend_bos: bool) -> list[int]:
    """[BOS] "\n" (example " has the first letter:" " E" "\n")* word — the word is the last token.
    examples: (token id, text) of the in-context words."""
    out = [pieces["bos"]] if prepend_bos else []
    out += pieces["newline"]
    for example_id, text in examples:
        out += [example_id] + pieces["template"] + pieces["answers"][LETTERS[_letter(text)]] + pieces["newline"]
    return out + [word_id]


@torch.no_grad()
def word_activations(lm, module_name: str, prompts: list[list[int]], batch_size: int = 32, pad_id: int = 0) -> torch.Tensor:
    """The hook's activation at each prompt's last token: -> [n, d_in] (right-padded batches)."""
    device = next(lm.parameters()).device
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for r, p in enumerate(batch):
            ids[r, : len(p)] = torch.tensor(p)
        hidden = run_to_hooks(lm, ids.to(device), [module_name])[module_name]
        last = torch.tensor([len(p) - 1 for p in batch], device=hidden.device)
        rows.append(hidden[torch.arange(len(batch), device=hidden.device), last].float().cpu())
    return torch.cat(rows)


def prepare_first_letter(lm, tokenizer, module_name: str, *, n_words: int, icl_examples: int = 10,
                         prepend_bos: bool = True, seed: int = 0, batch_size: int = 32) -> FirstLetterData:
    """Words, prompts, activations and ground-truth probes; raises SaeKitError when too few words qualify."""
    vocabulary = alphabetic_vocabulary(tokenizer)
    rng = random.Random(seed)
    words = rng.sample(vocabulary, min(n_words, len(vocabulary)))
    split = int(0.8 * len(words))
    train, test = words[:split], words[split:]
    counts = [sum(_letter(t) == i for _, t in train) for i in range(26)]
    letters = [i for i in range(26) if counts[i] >= MIN_TRAIN_WORDS and any(_letter(t) == i for _, t in test)]
    if not letters:
        remedy = ("raise --absorption-words" if len(words) < len(vocabulary) else
                  "the tokenizer's vocabulary is too small for this task (a real one has thousands of such words)")
        raise SaeKitError(
            f"first-letter task: the vocabulary has {len(vocabulary)} single-token alphabetic words; of the "
            f"{len(words)} used, no letter has {MIN_TRAIN_WORDS} train words and a test word: {remedy}")
    pieces = prompt_pieces(tokenizer)
    prompts = {name: [prompt_ids(pieces, token_id, rng.sample([w for w in split_words if w[0] != token_id],
                                                                 min(icl_examples, len(split_words) - 1)), prepend_bos)
                      for token_id, _ in split_words] for name, split_words in (("train", train), ("test", test))}
    pad_id = special_token_ids(tokenizer)[1]
    train_x = word_activations(lm, module_name, prompts["train"], batch_size, pad_id)
    test_x = word_activations(lm, module_name, prompts["test"], batch_size, pad_id)
    train_y = torch.tensor([_letter(t) for _, t in train])
    test_y = torch.tensor([_letter(t) for _, t in test])
    targets = torch.stack([(train_y == i).double() for i in letters])  # [L, n_train]
    fit = fit_logistic(train_x[None], targets, balanced_weights(targets))
    scores = test_x.double() @ fit.coef.T + fit.intercept  # [n_test, L]
    f1 = {LETTERS[i]: f1_score(scores[:, j], test_y == i) for j, i in enumerate(letters)}
    return FirstLetterData([t for _, t in train], [t for _, t in test], train_x, test_x, train_y, test_y,
                           letters, fit.coef.float(), fit.intercept.float(), f1, len(vocabulary))


def main_latents(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                 max_k: int = 10) -> tuple[list[int], dict[int, float]]:
    """The letter's main latents by k-sparse probing, and the test F1 for each k. z [n, d_sae];
    y [n] bool. Ranking: mean(z | y) − mean(z | not y), largest first."""
    difference = z_train[y_train].mean(0) - z_train[~y_train].mean(0)
    ranked = torch.sort(difference, descending=True, stable=True).indices[: min(max_k, z_train.shape[1])]
    ks = list(range(1, len(ranked) + 1))
    fits = fit_padded([(z_train[:, ranked[:k]], y_train) for k in ks], balanced=True)
    f1 = {k: f1_score(z_test[:, ranked[:k]].double() @ coef + b, y_test) for k, (coef, b) in zip(ks, fits)}
    chosen, best = ranked[:1], -100.0
    for k in ks:  # grow k while F1 jumps by ≥ F1_JUMP (SAEBench's add_feature_splits_to_metrics_df)
        if f1[k] > best + F1_JUMP:
            best, chosen = f1[k], ranked[:k]
        else:
            break
    return [int(i) for i in chosen], f1


def absorption_scores(x: torch.Tensor, z: torch.Tensor, W_dec: torch.Tensor, probe: torch.Tensor,
                      main: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (absorption fraction [n], full absorption [n] bool), as in the module docstring.

    x [n, d_in] activations, z [n, d_sae] latents, W_dec [d_sae, d_in], probe [d_in] (any norm),
    main: the main latents' indices.
    """
    direction = probe.double() / probe.double().norm()
    a = x.double() @ direction  # [n] probe projection
    along = W_dec.double() @ direction  # [d_sae] W_dec[i]·p̂
    cos = along / W_dec.double().norm(dim=-1).clamp_min(1e-30)
    c = z.double() * along  # [n, d_sae] contributions along p̂
    is_main = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
    is_main[main] = True
    main_proj = c[:, is_main].sum(-1)
    absorbers = torch.where((~is_main & (cos >= FRACTION_COS))[None] & (c > 0), c, torch.zeros_like(c))
    top_absorbers = absorbers.topk(min(MAX_ABSORBERS, c.shape[1]), dim=-1).values.sum(-1)
    absorbed = torch.minimum(top_absorbers, a - main_proj)
    fraction = (absorbed / (absorbed + main_proj)).clamp(0, 1)
    fraction = torch.where(main_proj <= 0, torch.ones_like(a), fraction)
    fraction = torch.where((main_proj >= a) | (top_absorbers / a < PROJECTION_PROPORTION), torch.zeros_like(a), fraction)
    top = c.argmax(-1)
    silent = (z[:, is_main] <= SILENT).all(-1)
    full = silent & (cos[top] >= FULL_ABSORPTION_COS) & (a > 0) & (c.gather(1, top[:, None]).squeeze(1) / a >= PROJECTION_PROPORTION)
    return fraction.float(), full


@torch.no_grad()
def absorption_result(model, data: FirstLetterData, max_k: int = 10, min_probe_f1: float = 0.6) -> dict:
    """One model's absorption per letter and overall (SAEBench's names)."""
    device = model.W_dec.device
    z_train = model.encode(data.train_x.to(device, model.W_dec.dtype)).float().cpu()
    z_test = model.encode(data.test_x.to(device, model.W_dec.dtype)).float().cpu()
    W_dec = model.W_dec.detach().float().cpu()
    letters = {}
    for j, i in enumerate(data.letters):
        letter = LETTERS[i]
        main, f1 = main_latents(z_train, data.train_y == i, z_test, data.test_y == i, max_k)
        scores = data.test_x.double() @ data.probe_coef[j].double() + float(data.probe_intercept[j])
        positives = (data.test_y == i) & (scores > 0)  # probe true positives
        fraction, full = absorption_scores(data.test_x[positives], z_test[positives], W_dec, data.probe_coef[j], main)
        n = int(positives.sum())
        letters[letter] = {"probe_f1": data.probe_f1[letter], "num_probe_true_positives": n,
                           "num_full_absorption": int(full.sum()),
                           "full_absorption_rate": float(full.double().mean()) if n else None,
                           "mean_absorption_fraction": float(fraction.double().mean()) if n else None,
                           "num_split_features": len(main), "main_latents": main,
                           "k_sparse_f1": {str(k): v for k, v in f1.items()}}
    kept = [r for r in letters.values() if r["probe_f1"] > min_probe_f1 and r["num_probe_true_positives"] > 0]
    result = {"n_vocabulary_words": data.n_vocabulary, "n_train_words": len(data.train_words),
              "n_test_words": len(data.test_words), "n_letters_probed": len(letters), "n_letters_evaluated": len(kept),
              **_scores(kept), "letters": letters}
    if len(kept) < SAEBENCH_MIN_LETTERS:
        result["warning"] = (f"only {len(kept)} letters have a probe with test F1 > {min_probe_f1} and true positives; "
                             f"SAEBench needs {SAEBENCH_MIN_LETTERS} to report absorption")
    return result


def _scores(kept: list[dict]) -> dict:
    """Means and standard deviations over letters (None where no letter qualifies)."""
    out = {}
    for score, key in (("mean_absorption_fraction_score", "mean_absorption_fraction"),
                       ("mean_full_absorption_score", "full_absorption_rate"),
                       ("mean_num_split_features", "num_split_features")):
        values = [r[key] for r in kept]
        out[score] = statistics.mean(values) if values else None
        out["std_dev_" + score.removeprefix("mean_")] = statistics.stdev(values) if len(values) > 1 else None
    return out
