"""Steering with a transcoder: z is read from the MLP's input and the change is made to the MLP's
output, out' = out + (c − z_i) W_dec,i, in the same forward pass. Clamping every feature to its
own value changes nothing; any other clamp moves the MLP output by exactly that vector; the KV
cache steers each position once; `compare` runs end to end."""

from __future__ import annotations

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
from sae_kit.lm.hooks import capture, resolve_hooks, run_to_hooks
from sae_kit.steering.generate import GenerateOptions, encode_prompt, generate
from sae_kit.steering.hook import Intervention, SteeringHook, attach, hook_modules, steer
from sae_kit.steering.sweep import compare

D_SAE = 48
PROMPT = "Return the value of the attribute"


@pytest.fixture(scope="module")
def points(loaded):
    return resolve_hooks(loaded.model, ["mlp_in.1", "mlp.1"])


@pytest.fixture(scope="module", params=["transcoder", "skip-transcoder"])
def transcoder(request, loaded, points):
    """A transcoder on mlp_in.1 -> mlp.1 whose features fire on ~20 % of the MLP inputs of a few texts."""
    from sae_kit.lm.corpus import python_docstrings

    texts = [t for _, t in zip(range(8), python_docstrings())]
    inputs = torch.cat([run_to_hooks(loaded.model, loaded.tokenizer(t[:300], return_tensors="pt").input_ids[:, :48],
                                     [points[0]])[points[0]][0] for t in texts])
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch=request.param, d_in=32, d_sae=D_SAE, hook="mlp_in.1",
                                                target_hook="mlp.1")).eval()
    with torch.no_grad():
        model.W_enc.copy_(torch.nn.functional.normalize(torch.randn(32, D_SAE), dim=0))
        model.b_enc.copy_(-(inputs @ model.W_enc).quantile(0.8, dim=0))
        model.W_dec.mul_(0.05)
        model.b_dec.normal_(0, 0.01)
        if model.skip:
            model.W_skip.normal_(0, 0.01)
    return model.requires_grad_(False)


def ids(loaded):
    return encode_prompt(loaded.tokenizer, PROMPT)


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_the_transcoder_reads_the_mlp_input_and_writes_the_mlp_output(loaded, transcoder, points):
    assert hook_modules(loaded.model, transcoder) == tuple(points)
    assert points[0].endswith(".mlp:input") and points[1].endswith(".mlp")


def test_clamping_every_feature_to_its_own_value_changes_no_logit(loaded, transcoder, points):
    read, write = points
    input_ids = ids(loaded)
    clean = logits(loaded.model, input_ids)
    z = transcoder.encode(run_to_hooks(loaded.model, input_ids, [read])[read])  # [1, seq, d_sae], from the MLP input
    assert (z > 0).any()

    def clamp_all_to(values):
        return SteeringHook(transcoder, clamp_features=torch.arange(D_SAE), clamp_values=values, skip_bos=False)

    with attach(loaded.model, write, clamp_all_to(z), read=read):
        same = logits(loaded.model, input_ids)
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-5)
    with attach(loaded.model, write, clamp_all_to(z + 1), read=read):
        moved = logits(loaded.model, input_ids)
    assert (moved - clean).abs().max() > 1e-4, "the hook must be active"


def test_a_clamp_moves_the_mlp_output_by_c_minus_z_times_the_decoder_row(loaded, transcoder, points):
    """out' − out = (c − z_i(x)) W_dec,i at every steered position, x the MLP's input (BOS untouched)."""
    read, write = points
    input_ids = ids(loaded)
    clean = run_to_hooks(loaded.model, input_ids, [read, write])
    feature, c = 7, 2.5
    with steer(loaded.model, transcoder, [Intervention(feature, "clamp", c)]), \
            capture(loaded.model, [write], stop=False) as steered:
        logits(loaded.model, input_ids)
    z = transcoder.encode(clean[read])[..., feature]  # [1, seq]
    expected = (c - z)[..., None] * transcoder.W_dec[feature]
    delta = steered[write] - clean[write]
    torch.testing.assert_close(delta[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(delta[:, 0], torch.zeros_like(delta[:, 0]))  # BOS is never steered


def test_kv_cache_steers_each_position_once(loaded, transcoder):
    input_ids = ids(loaded)
    p, n = input_ids.shape[1], 6
    options = GenerateOptions(max_new_tokens=n)
    extra = dict(output_logits=True, return_dict_in_generate=True)
    with steer(loaded.model, transcoder, [Intervention(3, "clamp", 40.0), Intervention(5, "add", 30.0)]) as hook:
        cached = generate(loaded.model, input_ids, options, hook, **extra)
        assert hook.steered_positions == list(range(1, p + n - 1))
        hook.reset(prompt_len=p)
        forced = logits(loaded.model, cached.sequences)[0, p - 1: -1]
    torch.testing.assert_close(torch.cat(cached.logits), forced, rtol=1e-4, atol=1e-4)
    baseline = generate(loaded.model, input_ids, options, **extra)
    assert not torch.allclose(baseline.logits[0], cached.logits[0])


def test_compare_reports_the_steered_module(loaded, transcoder):
    result = compare(loaded, transcoder, [Intervention(3, "clamp", 40.0)], [PROMPT],
                     options=GenerateOptions(max_new_tokens=4))
    assert result.settings["hook_module"].endswith(".mlp:input")
    assert result.settings["steered_module"].endswith(".mlp")
    assert len(result.prompts) == 1 and result.prompts[0].outcomes[0].kl_next >= 0
