"""Feature analysis: the streaming statistics against brute force (exactly), the analysis
directory format, logit effects against the model's own head, feature selection, windows,
the prompt view and the CLI. Real components throughout: the tiny Llama store from conftest and
real `SparseAutoencoder` runs whose biases are set so features fire at chosen densities."""

from __future__ import annotations

import json

import pytest
import torch

from sae_kit.analysis import (
    AnalysisConfig,
    load_analysis,
    parse_feature_list,
    select_features,
    stream_feature_stats,
    token_batches,
)
from sae_kit.analysis.examples import encoded_activations, example_windows, feature_activations
from sae_kit.analysis.stats import (
    FeatureStats,
    bands_of_bins,
    exponent_above,
    feature_salts,
    histogram_bin,
    sample_keys,
)
from sae_kit.cli import main
from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore
from tests.conftest import D_SAE, HIST_BINS, HOOK, QUANTILES, TOP_K, calibrated_autoencoder

# ----------------------------------------------------------------------------- helpers


def brute_force(z: torch.Tensor, index: torch.Tensor, k: int, Q: int, H: int) -> dict[str, torch.Tensor]:
    """Every statistic from the full latent matrix z [N, F], feature by feature, in plain Python order."""
    F = z.shape[1]
    out = {name: [] for name in ("top_values", "top_indices", "hist_counts", "band_values", "band_indices", "band_counts")}
    salts = feature_salts(F)
    for f in range(F):
        col = z[:, f]
        fired = (col > 0).nonzero().squeeze(1).tolist()
        order = sorted(fired, key=lambda i: (-col[i].item(), index[i].item()))[:k]
        out["top_values"].append(torch.tensor([col[i].item() for i in order] + [0.0] * (k - len(order))))
        out["top_indices"].append(torch.tensor([index[i].item() for i in order] + [-1] * (k - len(order))))
        if not fired:
            for name, shape in (("hist_counts", (H,)), ("band_counts", (Q,))):
                out[name].append(torch.zeros(shape, dtype=torch.long))
            out["band_values"].append(torch.zeros(Q, k))
            out["band_indices"].append(torch.full((Q, k), -1))
            continue
        fired = torch.tensor(fired)
        maximum = col.max()
        exponent = exponent_above(maximum[None])
        bins = histogram_bin(col[fired], exponent.expand(len(fired)), H)
        out["hist_counts"].append(torch.bincount(bins, minlength=H))
        band = bands_of_bins(torch.ldexp(torch.ones(1), exponent), maximum[None], H, Q)[0][bins]
        keys = sample_keys(index[fired], torch.full_like(fired, f), salts)
        values, indices, counts = torch.zeros(Q, k), torch.full((Q, k), -1), torch.zeros(Q, dtype=torch.long)
        for q in range(Q):
            members = (band == q).nonzero().squeeze(1)
            counts[q] = len(members)
            sample = members[torch.argsort(keys[members])][:k].tolist()  # uniform: k smallest hashed keys
            sample.sort(key=lambda j: (-col[fired[j]].item(), index[fired[j]].item()))
            values[q, : len(sample)] = col[fired[sample]]
            indices[q, : len(sample)] = index[fired[sample]]
        out["band_values"].append(values)
        out["band_indices"].append(indices)
        out["band_counts"].append(counts)
    return {name: torch.stack(parts) for name, parts in out.items()}


def assert_matches_brute_force(stats: dict, z: torch.Tensor, index: torch.Tensor, k: int, Q: int, H: int) -> None:
    expected = brute_force(z, index, k, Q, H)
    for name, tensor in expected.items():
        assert torch.equal(stats[name], tensor.to(stats[name].dtype)), name
    assert torch.equal(stats["max_activation"], z.clamp(min=0).max(0).values)
    assert torch.equal(stats["fire_count"], (z > 0).sum(0))
    assert torch.allclose(stats["density"], (z > 0).float().mean(0))
    mean = torch.where((z > 0).any(0), z.clamp(min=0).sum(0) / (z > 0).sum(0).clamp(min=1), 0.0)
    assert torch.allclose(stats["mean_nonzero"], mean, rtol=1e-5)


# ----------------------------------------------------------------------------- streaming statistics


@pytest.mark.parametrize("batch,initial_log", [(1, 4), (97, 64), (5000, 1 << 20)])
def test_feature_stats_equal_brute_force_on_synthetic_latents(batch, initial_log):
    """Ties (rounded values), a growing scale (ranges double mid-stream), a dead feature, a tiny
    value, log compactions: every statistic must equal the brute-force one exactly."""
    torch.manual_seed(1)
    N, F = 1500 if batch > 1 else 300, 23
    z = torch.relu(torch.randn(N, F)) * torch.linspace(0.01, 4, N)[:, None]
    z[::5] = torch.round(z[::5])  # many exact ties
    z[:, 3] = 0  # dead
    z[7, 4] = 1e-30
    index = torch.arange(N) * 3 + 11  # global indices need not be contiguous
    stats = FeatureStats(F, top_k=5, n_quantiles=4, hist_bins=16, initial_log=initial_log)
    for start in range(0, N, batch):
        stats.update(z[start : start + batch], index[start : start + batch])
    assert_matches_brute_force(stats.finalize(), z, index, 5, 4, 16)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_select_bottom_k_equals_sorting_each_group(k):
    from sae_kit.analysis.selection import best_per_group, select_bottom_k, token_keys

    generator = torch.Generator().manual_seed(k)
    group = torch.randint(0, 50, (5000,), generator=generator) ** 2 // 50  # uneven group sizes
    key = token_keys(torch.randperm(5000, generator=generator))  # distinct keys
    calm, chosen, chosen_group, rank = select_bottom_k(group, key, torch.bincount(group, minlength=50), k)
    kept = torch.cat([calm, chosen])
    expected = {i for g in group.unique().tolist() for i in
                (group == g).nonzero().squeeze(1)[torch.argsort(key[group == g])][:k].tolist()}
    assert set(kept.tolist()) == expected and len(kept) == len(expected)
    assert torch.equal(chosen_group, group[chosen]) and torch.all(rank < k)
    position, sorted_group, _ = best_per_group(group, key, k)
    assert set(position.tolist()) == expected and torch.all(sorted_group[1:] >= sorted_group[:-1])


def test_feature_stats_band_edges_and_samples_are_consistent():
    torch.manual_seed(2)
    z = torch.relu(torch.randn(4000, 9)) ** 2
    stats = FeatureStats(9, top_k=7, n_quantiles=5, hist_bins=32)
    stats.update(z, torch.arange(4000))
    out = stats.finalize()
    maximum = out["max_activation"]
    assert torch.all(out["band_lower"][:, 0] == 0)
    assert torch.equal(out["band_upper"][:, -1], maximum)
    assert torch.all(out["band_lower"][:, 1:] == out["band_upper"][:, :-1])  # contiguous bands
    ideal = torch.arange(1, 5) / 5 * maximum[:, None]
    assert torch.all((out["band_upper"][:, :-1] - ideal).abs() <= maximum[:, None] / 32 + 1e-6)  # within half a bin
    assert torch.equal(out["band_counts"].sum(1), out["fire_count"])
    assert torch.equal(out["hist_counts"].sum(1), out["fire_count"])
    filled = out["band_indices"] >= 0
    values = out["band_values"]
    assert torch.all(values[filled] >= out["band_lower"][..., None].expand_as(values)[filled])
    assert torch.all(values[filled] <= out["band_upper"][..., None].expand_as(values)[filled])
    assert torch.equal(filled.sum(-1), out["band_counts"].clamp(max=7))  # k per band, or all of a small band


def test_overlapped_bookkeeping_equals_serial(tiny_store):
    """The worker-thread pipeline gives exactly the serial result; a worker error reaches the caller."""
    sae = calibrated_autoencoder(tiny_store)
    store = ActivationStore(tiny_store)
    results = []
    for overlap in (False, True):
        stats = stream_feature_stats(token_batches(store, HOOK, batch_size=512), sae.encode, D_SAE, top_k=4,
                                     n_quantiles=3, hist_bins=8, overlap=overlap, progress=False)
        results.append(stats.finalize())
    for name, tensor in results[0].items():
        assert torch.equal(tensor, results[1][name]), name
    backwards = [(x, i.flip(0)) for x, i in token_batches(store, HOOK, batch_size=512)]
    with pytest.raises(ValueError, match="increasing"):
        stream_feature_stats(iter(backwards), sae.encode, D_SAE, overlap=True, progress=False)


def test_feature_stats_rejects_out_of_order_rows():
    stats = FeatureStats(4, top_k=2, n_quantiles=1, hist_bins=2)
    stats.update(torch.ones(3, 4), torch.tensor([5, 6, 7]))
    with pytest.raises(ValueError, match="increasing"):
        stats.update(torch.ones(1, 4), torch.tensor([7]))


# ----------------------------------------------------------------------------- the analysis pass on a real store


def test_analysis_equals_brute_force_on_the_store(tiny_store, tiny_run, tiny_analysis):
    """Encode the whole store once more (same batches), compute everything per feature in Python."""
    from sae_kit.autoencoders import load_autoencoder

    sae = load_autoencoder(tiny_run)
    store = ActivationStore(tiny_store)
    zs, indices = [], []
    with torch.no_grad():
        for x, index in token_batches(store, HOOK, batch_size=1000):
            zs.append(sae.encode(x))
            indices.append(index)
    z, index = torch.cat(zs), torch.cat(indices)
    a = tiny_analysis
    stats = {name: getattr(a, name) for name in ("top_values", "top_indices", "hist_counts", "band_values", "band_indices",
                                                 "band_counts", "max_activation", "fire_count", "density", "mean_nonzero")}
    assert_matches_brute_force(stats, z, index, TOP_K, QUANTILES, HIST_BINS)
    assert a.n_tokens == z.shape[0] == store.count("all", skip_bos=True)
    positions = store.gather(None, a.top_indices[a.top_indices >= 0])["position"]
    assert torch.all(positions > 0)  # BOS left out


def test_analysis_directory_contract(tiny_analysis, tiny_run, tiny_store):
    info = json.loads((tiny_analysis.path / "analysis.json").read_text())
    assert info["format"] == "sae-kit-analysis"
    assert info["run"] == str(tiny_run.resolve()) and info["store"] == str(tiny_store.resolve())
    assert info["hook"] == HOOK and info["model"] == str(ActivationStore(tiny_store).manifest["model"]["spec"])
    assert (info["top_k"], info["n_quantiles"], info["hist_bins"]) == (TOP_K, QUANTILES, HIST_BINS)
    assert info["logit_norm"] == "model.norm"
    a = load_analysis(tiny_analysis.path)
    F = D_SAE
    shapes = {"density": (F,), "max_activation": (F,), "mean_nonzero": (F,), "top_values": (F, TOP_K),
              "top_indices": (F, TOP_K), "band_values": (F, QUANTILES, TOP_K), "band_indices": (F, QUANTILES, TOP_K),
              "hist_counts": (F, HIST_BINS), "promoted_ids": (F, 10), "promoted_logits": (F, 10),
              "suppressed_ids": (F, 10), "suppressed_logits": (F, 10)}
    for name, shape in shapes.items():
        assert tuple(getattr(a, name).shape) == shape, name
    for name in ("top_indices", "band_indices", "promoted_ids", "suppressed_ids", "fire_count", "hist_counts"):
        assert getattr(a, name).dtype == torch.int64, name
    assert torch.all(a.promoted_logits[:, :-1] >= a.promoted_logits[:, 1:])
    assert torch.all(a.suppressed_logits[:, :-1] <= a.suppressed_logits[:, 1:])
    assert torch.all(a.suppressed_logits < a.promoted_logits[:, :1])
    rare = a.fire_count < TOP_K
    assert torch.all(a.top_indices[rare][:, -1] == -1)  # −1 where fewer than k
    assert a.n_features == F and "48 features" in repr(a)


def test_logit_effects_equal_the_models_own_head(tiny_model_dirs):
    """For each architecture: W_U (g ⊙ c(d)) equals head(norm(d)) − head(norm(0)) for a zero-mean
    unit-RMS d (where the norm is exactly linear), and the reported top tokens are its top-k."""
    from sae_kit.analysis.logit_effects import logit_effects, unembedding
    from sae_kit.lm.models import load_model

    for arch, path in tiny_model_dirs.items():
        model = load_model(str(path), device="cpu").model
        unembed = unembedding(model)
        d = torch.randn(5, unembed.W_U.shape[1], generator=torch.Generator().manual_seed(0))
        d = d - d.mean(1, keepdim=True)
        d = d / d.pow(2).mean(1, keepdim=True).sqrt()
        head, norm = model.get_output_embeddings(), dict(model.named_modules())[unembed.norm_name]
        with torch.no_grad():
            direct = head(norm(d[:, None, :]))[:, 0] - head(norm(torch.zeros_like(d)[:, None, :]))[:, 0]
        assert torch.allclose(unembed.direction_logits(d), direct, atol=2e-4), arch
        assert unembed.centered == (arch in ("gpt2", "gpt_neox")), arch
        effects = logit_effects(d, model, top=7)
        assert torch.equal(effects.promoted_ids, direct.topk(7, dim=1).indices), arch
        assert torch.equal(effects.suppressed_ids, (-direct).topk(7, dim=1).indices), arch


def test_select_features_filters_and_sorts(tiny_analysis):
    a = tiny_analysis
    picked = select_features(a, min_density=0.005, max_density=0.05)
    assert picked and all(0.005 <= float(a.density[f]) <= 0.05 for f in picked)
    assert [float(a.max_activation[f]) for f in picked] == sorted((float(a.max_activation[f]) for f in picked), reverse=True)
    assert set(picked) == {f for f in range(a.n_features) if 0.005 <= float(a.density[f]) <= 0.05}
    assert select_features(a, min_density=0, max_density=1, sort_by="density", descending=False, limit=3) == \
        torch.argsort(a.density, stable=True)[:3].tolist()
    assert select_features(a, sort_by="index", min_density=0, max_density=1, descending=False) == list(range(D_SAE))
    with pytest.raises(SaeKitError, match="sort by"):
        select_features(a, sort_by="nonsense")


def test_parse_feature_list():
    assert parse_feature_list("3, 0-2,7", 10) == [0, 1, 2, 3, 7]
    with pytest.raises(SaeKitError, match="out of range"):
        parse_feature_list("5-12", 10)
    with pytest.raises(SaeKitError, match="cannot read"):
        parse_feature_list("a-b", 10)


@pytest.mark.parametrize("arch,k", [("sae", None), ("topk", 5), ("ae", None), ("vae", None), ("pca", None)])
@pytest.mark.parametrize("pairs", [2000, 5])  # many pairs: the matmul path; few: the pair-by-pair path
def test_window_activation_fast_path_equals_encode(tiny_store, arch, k, pairs):
    sae = calibrated_autoencoder(tiny_store, arch=arch, d_sae=24 if arch != "pca" else 16, k=k)
    x = ActivationStore(tiny_store).gather(HOOK, torch.arange(100, 400))["acts"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fired = (sae.encode(x) != 0).nonzero()
    fired = fired[torch.randperm(len(fired), generator=generator)[: pairs // 2 + 1]]  # half of the pairs fire
    rows = torch.cat([fired[:, 0], torch.randint(0, x.shape[0], (pairs // 2,), generator=generator)])
    feature = torch.cat([fired[:, 1], torch.randint(0, sae.d_sae, (pairs // 2,), generator=generator)])
    with torch.no_grad():
        fast = feature_activations(sae, x, rows, feature, block=128)
        plain = encoded_activations(sae.encode, x, rows, feature, batch=64)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert (plain != 0).any()


def test_example_windows_stay_in_context_and_re_encode(tiny_store, tiny_run, tiny_analysis):
    from sae_kit.autoencoders import load_autoencoder

    a = tiny_analysis
    features = select_features(a, min_density=0, max_density=1, limit=5)
    w = example_windows(a, features, before=3, after=2)
    store = ActivationStore(tiny_store)
    sae = load_autoencoder(tiny_run)
    assert w.tokens.shape == (5, TOP_K * (1 + QUANTILES), 6)
    filled = w.centers >= 0
    assert torch.equal(w.centers[:, :TOP_K], a.top_indices[features])
    assert torch.equal(w.activations[..., 3][filled], w.center_values[filled])
    for s, e in filled.nonzero().tolist():
        centre = int(w.centers[s, e])
        for j in range(6):
            token_index = centre - 3 + j
            inside = 0 <= token_index < store.n_tokens and store.gather(None, [token_index])["context"] == w.contexts[s, e]
            assert (int(w.tokens[s, e, j]) >= 0) == bool(inside)
            if inside:
                row = store.gather(HOOK, [token_index])
                assert int(w.tokens[s, e, j]) == int(row["tokens"][0])
                expected = sae.encode(row["acts"])[0, features[s]]
                assert torch.allclose(w.activations[s, e, j], expected, atol=1e-5)


# ----------------------------------------------------------------------------- prompt view and CLI


def test_prompt_features_and_cli(tiny_run, tiny_analysis, capsys):
    from sae_kit.analysis.prompt_view import format_prompt_features, prompt_features_for_run

    result = prompt_features_for_run(str(tiny_run), "Return the sum\nof two numbers.", top=3, device="cpu")
    T = len(result.tokens)
    assert result.features.shape == (T, 3) and result.activations.shape == (T, D_SAE)
    assert result.tokens[0] == "<bos>" and "↵" in "".join(result.tokens)
    expected_values, expected_features = result.activations.topk(3, dim=1)
    fired = expected_values > 0
    assert torch.equal(result.features[fired], expected_features[fired])
    assert torch.all(result.features[~fired] == -1)
    text = format_prompt_features(result, tiny_analysis)
    assert len(text.splitlines()) == T + 3 and "% of max" in text.splitlines()[0]

    assert main(["features", "--run", str(tiny_run), "--text", "Return the sum", "--analysis", str(tiny_analysis.path),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "features firing most on the text" in out and "% of max" in out


def test_analyze_cli_and_errors(tiny_run, tiny_store, tmp_path, capsys):
    out = tmp_path / "A"
    args = ["analyze", "--run", str(tiny_run), "--out", str(out), "--no-logits", "--tokens", "1500", "--top-k", "3",
            "--quantiles", "2", "--hist-bins", "8", "--device", "cpu"]
    assert main(args) == 0
    a = load_analysis(out)
    assert a.n_tokens == 1500 and a.promoted_ids is None and a.top_values.shape == (D_SAE, 3)
    capsys.readouterr()
    assert main(args) == 1  # exists: asks for --overwrite, in one line
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sae-kit analyze: error:")]
    assert len(errors) == 1 and "--overwrite" in errors[0]
    assert main(args + ["--overwrite", "--hook", "model.layers.1.mlp"]) == 0  # mlp.1 has the same width here
    assert main(["analyze", "--run", str(tmp_path), "--out", str(tmp_path / "B")]) == 1
    assert "not an autoencoder run directory" in capsys.readouterr().err
    with pytest.raises(SaeKitError, match="hist-bins"):
        AnalysisConfig(run=None, out="x", n_quantiles=10, hist_bins=16)
    with pytest.raises(SaeKitError, match="not an analysis directory"):
        load_analysis(tmp_path)
