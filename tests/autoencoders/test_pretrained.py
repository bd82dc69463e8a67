"""`load_pretrained`: files written in each foreign format's own names and shapes (Gemma Scope's
params.npz, dictionary_learning's ae.pt + config.json, SAELens and sparsify directories) open as the
sae-kit model computing the source's forward, written out independently here; malformed files fail
in one line; every command's --run takes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, RunInfo, build_autoencoder, load_autoencoder, load_pretrained, run_info
from sae_kit.autoencoders.pretrained import detect_format
from sae_kit.autoencoders.saelens import export_saelens
from sae_kit.cli import main
from sae_kit.errors import SaeKitError
from tests.autoencoders.test_sparsify import sparsify_forward, write_sparsify

D_IN, D_SAE = 8, 24


def randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def inputs(d_in=D_IN, n=64):
    return randn(n, d_in, seed=99, scale=2.0)


# ----------------------------------------------------------------------------- Gemma Scope


def gemma_params(d_in=D_IN, d_sae=D_SAE):
    """Arrays as Gemma Scope's params.npz holds them (numpy, float32)."""
    return {"W_enc": randn(d_in, d_sae, seed=1).numpy(), "W_dec": randn(d_sae, d_in, seed=2).numpy(),
            "b_enc": randn(d_sae, seed=3, scale=0.3).numpy(), "b_dec": randn(d_in, seed=4, scale=0.5).numpy(),
            "threshold": (torch.rand(d_sae, generator=torch.Generator().manual_seed(5)) * 2).numpy()}


def write_gemma(directory, params):
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "params.npz", **params)
    return directory


def gemma_forward(p, x):
    """Gemma Scope's JumpReLU (its tutorial / SAELens with apply_b_dec_to_input False):
    pre = x W_enc + b_enc, z = ReLU(pre)·1[pre > θ], x̂ = z W_dec + b_dec."""
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    z = torch.relu(pre) * (pre > t["threshold"])
    return z, z @ t["W_dec"] + t["b_dec"]


def test_gemma_scope_params_npz_opens_as_jumprelu_encoding_as_gemma_scope(tmp_path):
    params = gemma_params()
    directory = write_gemma(tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_20", params)
    model = load_pretrained(directory)
    x = inputs()
    z, x_hat = gemma_forward(params, x)
    assert model.arch == "jumprelu" and (model.d_in, model.d_sae) == (D_IN, D_SAE)
    assert 0 < (z > 0).float().mean() < 0.9  # the thresholds cut some latents, not all
    torch.testing.assert_close(model.encode(x), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.reconstruct(x), x_hat, atol=1e-4, rtol=1e-5)
    features = torch.tensor([0, 5, 17])
    torch.testing.assert_close(model.subset_encoder(features)(x), z[:, features], atol=1e-5, rtol=1e-5)
    info = run_info(directory)
    assert info.hook == "resid.3" and info.store is None and info.model_name == "gemma-2-2b"
    assert detect_format(directory / "params.npz")[0] == "gemma-scope"  # the file itself also works
    torch.testing.assert_close(load_pretrained(directory / "params.npz").encode(x), z, atol=1e-5, rtol=1e-5)


def test_gemma_scope_lowercase_names_and_scaling_factor(tmp_path):
    params = gemma_params()
    scaling = (torch.rand(D_SAE, generator=torch.Generator().manual_seed(6)) + 0.5).numpy()
    renamed = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in params.items()}
    write_gemma(tmp_path / "g", {**renamed, "scaling_factor": scaling})
    model = load_pretrained(tmp_path / "g")
    x = inputs()
    z, _ = gemma_forward(params, x)
    # SAELens' finetuning scaling factor: x̂ = (z ⊙ s) W_dec + b_dec
    expected = (z * torch.from_numpy(scaling)) @ torch.from_numpy(params["W_dec"]) + torch.from_numpy(params["b_dec"])
    torch.testing.assert_close(model.reconstruct(x), expected, atol=1e-4, rtol=1e-5)
    assert model.cfg.hook is None  # no release layout in the path: commands take --hook


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("threshold"), "lacks array.*threshold"),
    (lambda p: p.update(b_enc=np.zeros(D_SAE + 1, np.float32)), r"b_enc has shape \(25,\), expected \[24\]"),
    (lambda p: p.update(W_dec=np.zeros((D_SAE, D_IN + 2), np.float32)), "transcoder"),
    (lambda p: p.update(threshold=np.array([{"a": 1}], dtype=object)), "without pickle"),
])
def test_gemma_scope_malformed_files_fail_in_one_line(tmp_path, change, message):
    params = gemma_params()
    change(params)
    write_gemma(tmp_path / "g", params)
    with pytest.raises(SaeKitError, match=message) as raised:
        load_pretrained(tmp_path / "g")
    assert "\n" not in str(raised.value) and "params.npz" in str(raised.value)


def test_gemma_scope_transcoders_and_embedding_saes_are_refused(tmp_path):
    for name, message in (("gemma-scope-2b-pt-transcoders/layer_0", "transcoders"),
                          ("gemma-scope-2b-pt-res/embedding/width_4k", "embedding SAEs")):
        directory = write_gemma(tmp_path / name / "average_l0_6", gemma_params())
        with pytest.raises(SaeKitError, match=message):
            load_pretrained(directory)


# ----------------------------------------------------------------------------- dictionary_learning


def dl_linear(out_features, in_features, seed):
    """nn.Linear's weight layout [out, in]."""
    return randn(out_features, in_features, seed=seed, scale=0.5)


def dl_standard(bias_name="bias"):
    return {"encoder.weight": dl_linear(D_SAE, D_IN, 1), "encoder.bias": randn(D_SAE, seed=2, scale=0.3),
            "decoder.weight": dl_linear(D_IN, D_SAE, 3), bias_name: randn(D_IN, seed=4, scale=0.5)}


def dl_topk(threshold=-1.0, k=3):
    return {**dl_standard("b_dec"), "k": torch.tensor(k, dtype=torch.int), "threshold": torch.tensor(threshold)}


def dl_plain():
    return {"W_enc": randn(D_IN, D_SAE, seed=1, scale=0.5), "b_enc": randn(D_SAE, seed=2, scale=0.3),
            "W_dec": randn(D_SAE, D_IN, seed=3, scale=0.5), "b_dec": randn(D_IN, seed=4, scale=0.5)}


def dl_gated():
    return {"decoder_bias": randn(D_IN, seed=4, scale=0.5), "encoder.weight": dl_linear(D_SAE, D_IN, 1),
            "r_mag": randn(D_SAE, seed=5, scale=0.3), "gate_bias": randn(D_SAE, seed=6, scale=0.3),
            "mag_bias": randn(D_SAE, seed=7, scale=0.3), "decoder.weight": dl_linear(D_IN, D_SAE, 3)}


# dictionary_learning's forward of each class (dictionary.py, trainers/*.py), written out
def ref_autoencoder(s, x):
    f = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    return f, f @ s["decoder.weight"].T + s["bias"]


def ref_autoencoder_new(s, x):
    f = torch.relu(x @ s["encoder.weight"].T + s["encoder.bias"])
    return f, f @ s["decoder.weight"].T + s["decoder.bias"]


def ref_topk(s, x):
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    top = post.topk(int(s["k"]), dim=-1)
    f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    return f, f @ s["decoder.weight"].T + s["b_dec"]


def ref_batchtopk(s, x):
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    f = post * (post > s["threshold"])
    return f, f @ s["decoder.weight"].T + s["b_dec"]


def ref_matryoshka(s, x):
    post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
    f = post * (post > s["threshold"])
    return f, f @ s["W_dec"] + s["b_dec"]


def ref_jumprelu(s, x):
    pre = x @ s["W_enc"] + s["b_enc"]
    f = torch.relu(pre * (pre > s["threshold"]))
    return f, f @ s["W_dec"] + s["b_dec"]


def ref_gated(s, x):
    x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    f = (x_enc + s["gate_bias"] > 0).float() * torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
    return f, f @ s["decoder.weight"].T + s["decoder_bias"]


DL_CASES = {
    "AutoEncoder": ("StandardTrainerAprilUpdate", dl_standard, ref_autoencoder, "sae"),
    "AutoEncoderNew": (None, lambda: dl_standard("decoder.bias"), ref_autoencoder_new, "sae"),
    "AutoEncoderTopK": ("TopKTrainer", dl_topk, ref_topk, "topk"),
    "BatchTopKSAE": ("BatchTopKTrainer", lambda: dl_topk(threshold=0.4), ref_batchtopk, "batchtopk"),
    "BatchTopKSAE-unestimated": ("BatchTopKTrainer", dl_topk, ref_batchtopk, "batchtopk"),
    "MatryoshkaBatchTopKSAE": ("MatryoshkaBatchTopKTrainer",
                               lambda: {**dl_plain(), "k": torch.tensor(3, dtype=torch.int), "threshold": torch.tensor(0.3),
                                        "group_sizes": torch.tensor([6, 6, 12])}, ref_matryoshka, "matryoshka"),
    "JumpReluAutoEncoder": ("JumpReluTrainer",
                            lambda: {**dl_plain(), "threshold": randn(D_SAE, seed=8, scale=0.5)}, ref_jumprelu, "jumprelu"),
    "GatedAutoEncoder": ("GatedSAETrainer", dl_gated, ref_gated, "gated"),
}


def write_dl(directory, dict_class, trainer_class, state, **trainer):
    """A trainer_i directory as dictionary_learning's trainSAE writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "ae.pt")
    config = {"dict_class": dict_class, "trainer_class": trainer_class, "activation_dim": D_IN, "dict_size": D_SAE,
              "lr": 1e-3, "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3, "submodule_name": "resid_post_layer_3",
              **trainer}
    (directory / "config.json").write_text(json.dumps({"trainer": {k: v for k, v in config.items() if v is not None},
                                                       "buffer": {"d_submodule": D_IN, "ctx_len": 128}}))
    return directory


@pytest.mark.parametrize("case", DL_CASES)
def test_dictionary_learning_classes_open_and_encode_as_their_forward(tmp_path, case):
    trainer_class, make, reference, arch = DL_CASES[case]
    dict_class = case.split("-")[0]
    state = make()
    directory = write_dl(tmp_path / "trainer_0", dict_class, trainer_class, state,
                         k=int(state["k"]) if "k" in state else None)
    model = load_pretrained(directory)
    x = inputs()
    f, x_hat = reference(state, x)
    assert model.arch == arch and (model.d_in, model.d_sae) == (D_IN, D_SAE)
    assert 0 < (f > 0).float().mean() < 1
    torch.testing.assert_close(model.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.reconstruct(x), x_hat, atol=1e-4, rtol=1e-5)
    assert run_info(directory).model_name == "EleutherAI/pythia-70m-deduped"


def test_dictionary_learning_class_from_the_trainer_alone(tmp_path):
    state = dl_gated()
    directory = write_dl(tmp_path / "t", None, "GatedAnnealTrainer", state)
    x = inputs()
    torch.testing.assert_close(load_pretrained(directory / "ae.pt").encode(x), ref_gated(state, x)[0], atol=1e-5, rtol=1e-5)
    assert load_pretrained(directory).cfg.metadata["dict_class"] == "GatedAutoEncoder"


def test_dictionary_learning_release_without_a_class_name(tmp_path):
    """The Pythia-70m 10_32768 release: config.json without dict_class, folder names giving the hook."""
    state = dl_standard()
    directory = tmp_path / "dictionaries" / "pythia-70m-deduped" / "resid_out_layer3" / "10_32768"
    directory.mkdir(parents=True)
    torch.save(state, directory / "ae.pt")
    (directory / "config.json").write_text(json.dumps({"dictionary": {"activation_dim": D_IN, "dict_size": D_SAE},
                                                       "trainer": {"lr": 1e-4, "l1_penalty": 0.1}}))
    model = load_pretrained(directory)
    x = inputs()
    assert model.arch == "sae" and model.cfg.hook == "resid.3"
    torch.testing.assert_close(model.reconstruct(x), ref_autoencoder(state, x)[1], atol=1e-4, rtol=1e-5)
    (directory / "config.json").unlink()
    torch.save(dl_topk(), directory / "ae.pt")  # TopK and BatchTopK share tensor names: the class must be named
    with pytest.raises(SaeKitError, match="tensor names do not tell"):
        load_pretrained(directory)


class NotATensor:
    """Pickled as code: weights_only=True must refuse it."""


@pytest.mark.parametrize("setup, message", [
    (lambda d: write_dl(d, "AutoEncoder", "StandardTrainer", {"step": 5, "ae": dl_standard(), "optimizer": {}}),
     "training backup"),
    (lambda d: write_dl(d, "AutoEncoder", "StandardTrainer", {"encoder.weight": NotATensor()}), "weights_only=True"),
    (lambda d: write_dl(d, "CrossCoder", "CrossCoderTrainer", dl_standard()), "'CrossCoder' is not supported"),
    (lambda d: write_dl(d, "AutoEncoder", "StandardTrainer", {k: v for k, v in dl_standard().items() if k != "bias"}),
     "lacks tensor.*bias"),
    (lambda d: write_dl(d, "BatchTopKSAE", "BatchTopKTrainer", {k: v for k, v in dl_topk().items() if k != "threshold"}),
     "lacks tensor.*threshold"),
    (lambda d: write_dl(d, "AutoEncoder", "StandardTrainer", {**dl_standard(), "bias": torch.zeros(D_IN + 1)}),
     "bias has shape"),
    (lambda d: write_dl(d, "AutoEncoderTopK", "TopKTrainer", dl_topk(k=3), k=5), "k=3 but config.json says k=5"),
    (lambda d: (write_dl(d, "AutoEncoder", "StandardTrainer", dl_standard()), (d / "config.json").write_text("{")),
     "not valid JSON"),
])
def test_dictionary_learning_malformed_files_fail_in_one_line(tmp_path, setup, message):
    setup(tmp_path / "t")
    with pytest.raises(SaeKitError, match=message) as raised:
        load_pretrained(tmp_path / "t")
    assert "\n" not in str(raised.value)


# ----------------------------------------------------------------------------- SAELens, sparsify, sae-kit runs


def test_saelens_sparsify_and_sae_kit_directories_open_through_the_same_function(tmp_path, tiny_run):
    model = build_autoencoder(AutoencoderConfig(arch="topk", d_in=D_IN, d_sae=D_SAE, k=4))
    x = inputs()
    export_saelens(model, tmp_path / "saelens")
    assert detect_format(tmp_path / "saelens")[0] == "saelens"
    torch.testing.assert_close(load_pretrained(tmp_path / "saelens").encode(x), model.encode(x))

    tensors = write_sparsify(tmp_path / "ckpt" / "layers.3", d_in=D_IN, expansion=3, k=3)
    z, x_hat = sparsify_forward(tensors, x, 3)
    loaded = load_pretrained(tmp_path / "ckpt" / "layers.3")
    torch.testing.assert_close(loaded.encode(x), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded.reconstruct(x), x_hat, atol=1e-4, rtol=1e-4)
    assert run_info(tmp_path / "ckpt" / "layers.3").hook == "resid.3"
    write_sparsify(tmp_path / "ckpt" / "layers.5", d_in=D_IN)
    with pytest.raises(SaeKitError, match=r"2 hook points; pass one of them: .*layers\.3, .*layers\.5$"):
        load_pretrained(tmp_path / "ckpt")

    ours = load_pretrained(tiny_run)  # a sae-kit run takes the run-directory path, unchanged
    reference = load_autoencoder(tiny_run)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values()))
    with pytest.raises(SaeKitError, match="not an autoencoder run directory.*Gemma Scope"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(SaeKitError, match="download the weights file"):
        load_pretrained(tmp_path / "half")


def test_run_info_from_the_small_files_equals_the_loaded_models(tmp_path):
    """run_info reads provenance without the weights; it must say what the loaded model says."""
    model = build_autoencoder(AutoencoderConfig(arch="sae", d_in=D_IN, d_sae=D_SAE, hook="mlp.2"))
    paths = [write_gemma(tmp_path / "gemma-scope-9b-it-mlp" / "layer_7" / "width_16k" / "average_l0_9", gemma_params()),
             write_gemma(tmp_path / "plain-gemma", gemma_params()),
             write_dl(tmp_path / "dl" / "trainer_0", "GatedAutoEncoder", "GatedSAETrainer", dl_gated()),
             export_saelens(model, tmp_path / "saelens")]
    for name, extra in (("layers.3", {}), ("layers.6.mlp", {"transcode": True})):
        write_sparsify(tmp_path / "ckpt" / name, d_in=D_IN, **extra)
        paths.append(tmp_path / "ckpt" / name)
    infos = [run_info(path) for path in paths]
    assert infos == [RunInfo.of(load_pretrained(path)) for path in paths]
    assert [(i.hook, i.target_hook) for i in infos] == [("mlp.7", None), (None, None), ("resid.3", None),
                                                        ("mlp.2", None), ("resid.3", None), ("mlp_in.6", "mlp.6")]
    assert infos[0].model_name == "gemma-2-9b-it" and infos[2].model_name == "EleutherAI/pythia-70m-deduped"


# ----------------------------------------------------------------------------- every command's --run


def test_analyze_evaluate_dashboard_and_steer_take_a_gemma_scope_directory(tmp_path, tiny_store, tiny_llama_dir, capsys):
    directory = write_gemma(tmp_path / "gemma", gemma_params(d_in=32, d_sae=64))
    out = tmp_path / "A"
    args = ["analyze", "--run", str(directory), "--out", str(out), "--no-logits", "--tokens", "1000", "--top-k", "3",
            "--quantiles", "2", "--hist-bins", "8", "--device", "cpu"]
    assert main(args) == 1  # no store recorded: one line asking for --store
    assert "pass --store" in capsys.readouterr().err
    assert main(args + ["--store", str(tiny_store), "--hook", "resid.1"]) == 0
    from sae_kit.analysis import load_analysis

    analysis = load_analysis(out)
    assert analysis.n_tokens == 1000 and analysis.top_values.shape == (64, 3)
    assert float(analysis.top_values.max()) > 0
    assert main(["evaluate", "--run", str(directory), "--store", str(tiny_store), "--hook", "resid.1",
                 "--ce-contexts", "0", "--device", "cpu"]) == 0
    result = json.loads((directory / "eval.json").read_text())
    assert result["arch"] == "jumprelu" and result["hook"] == "model.layers.1"
    assert main(["dashboard", "--analysis", str(out), "--out", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    fired = int(analysis.top_values[:, 0].argmax())
    steer = ["steer", "--run", str(directory), "--analysis", str(out), "--feature", f"{fired}=2x", "--prompt", "Return the sum",
             "--max-new-tokens", "2", "--out", str(tmp_path / "steer"), "--device", "cpu"]
    capsys.readouterr()
    assert main(steer) == 1  # no store, so no language model recorded: one line asking for --model
    assert "name it with --model" in capsys.readouterr().err
    assert main(steer + ["--model", str(tiny_llama_dir)]) == 1  # the hook point is unknown: asks for --hook
    assert "name it with --hook" in capsys.readouterr().err
    assert main(steer + ["--hook", "resid.1", "--model", str(tiny_llama_dir)]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "steer" / "results.json").read_text())["conditions"]


def test_import_writes_gemma_scope_and_dictionary_learning_as_run_directories(tmp_path):
    params = gemma_params()
    write_gemma(tmp_path / "g", params)
    assert main(["import", "gemmascope", "--path", str(tmp_path / "g"), "--out", str(tmp_path / "run_g"),
                 "--hook", "resid.2"]) == 0
    run = load_autoencoder(tmp_path / "run_g")
    x = inputs()
    torch.testing.assert_close(run.encode(x), gemma_forward(params, x)[0], atol=1e-5, rtol=1e-5)
    assert run_info(tmp_path / "run_g").hook == "resid.2"

    state = dl_topk()
    write_dl(tmp_path / "d", "AutoEncoderTopK", "TopKTrainer", state, k=3)
    assert main(["import", "dictionary-learning", "--path", str(tmp_path / "d"), "--out", str(tmp_path / "run_d")]) == 0
    torch.testing.assert_close(load_autoencoder(tmp_path / "run_d").encode(x), ref_topk(state, x)[0], atol=1e-5, rtol=1e-5)
