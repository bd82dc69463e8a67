"""Hook points on four architectures: aliases, capture equals hidden_states, stopping early, errors."""

import pytest
import torch

from sae_kit.errors import SaeKitError
from sae_kit.lm.hooks import (aliases, capture, format_hook_points, intervene, list_hook_points, resolve_hooks,
                              run_to_hooks)
from sae_kit.lm.models import load_model
from tests.conftest import ARCHITECTURES, N_LAYERS


@pytest.fixture(scope="module", params=ARCHITECTURES)
def loaded(request, tiny_model_dirs):
    return load_model(str(tiny_model_dirs[request.param]), device="cpu")


def test_resid_alias_equals_hidden_states(loaded):
    """resid.L is block L's output: hidden_states[L + 1] (the last entry has the final norm applied)."""
    ids = torch.randint(3, 200, (2, 9))
    with torch.no_grad():
        reference = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(N_LAYERS - 1):
        [name] = resolve_hooks(loaded.model, [f"resid.{layer}"])
        got = run_to_hooks(loaded.model, ids, [name])[name]
        torch.testing.assert_close(got, reference[layer + 1], rtol=0, atol=0)


def test_every_alias_kind_resolves_and_captures(loaded):
    table = aliases(loaded.model)
    for kind in ("resid", "mlp", "attn"):
        assert f"{kind}.0" in table, f"{type(loaded.model).__name__} lacks {kind}.0"
    names = resolve_hooks(loaded.model, ["attn.1", "mlp.1", "resid.1"])
    acts = run_to_hooks(loaded.model, torch.randint(3, 200, (1, 5)), names)
    assert all(acts[n].shape == (1, 5, loaded.model.config.hidden_size) for n in names)


def test_forward_stops_after_last_hook(loaded):
    """Blocks after the last hooked module never run."""
    ran = []
    table = aliases(loaded.model)
    modules = dict(loaded.model.named_modules())
    handles = [modules[table[f"resid.{i}"]].register_forward_hook(lambda *a, i=i: ran.append(i)) for i in range(N_LAYERS)]
    try:
        run_to_hooks(loaded.model, torch.randint(3, 200, (1, 4)), [table["resid.0"]])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]


def test_globs_and_module_names(loaded):
    blocks = [v for k, v in aliases(loaded.model).items() if k.startswith("resid.")]
    prefix = blocks[0].rsplit(".", 1)[0]
    assert resolve_hooks(loaded.model, [f"{prefix}.?"]) == blocks  # fnmatch: * would cross dots
    assert resolve_hooks(loaded.model, [blocks[1], "resid.1"]) == [blocks[1]]  # no repeats
    assert resolve_hooks(loaded.model, ["resid.-1"]) == [blocks[-1]]


def test_unknown_hook_lists_closest_names(loaded):
    with pytest.raises(SaeKitError, match=r"unknown hook 'resid\.99'.*closest valid names: .*resid\."):
        resolve_hooks(loaded.model, ["resid.99"])
    with pytest.raises(SaeKitError, match="closest valid names"):
        resolve_hooks(loaded.model, ["model.layerz.1"])


def test_hooks_removed_and_intervention_applies(loaded):
    [name] = resolve_hooks(loaded.model, ["resid.0"])
    ids = torch.randint(3, 200, (1, 6))
    with torch.no_grad():
        clean = loaded.model(input_ids=ids).logits
        with intervene(loaded.model, name, lambda h: h * 0):
            zeroed = loaded.model(input_ids=ids).logits
        after = loaded.model(input_ids=ids).logits
    assert not torch.allclose(clean, zeroed)
    torch.testing.assert_close(clean, after, rtol=0, atol=0)
    module = dict(loaded.model.named_modules())[name]
    before = dict(module._forward_hooks)  # transformers installs hooks of its own
    with pytest.raises(RuntimeError), capture(loaded.model, [name], stop=False):
        assert len(module._forward_hooks) == len(before) + 1
        raise RuntimeError("hooks must be removed even when the body fails")
    assert dict(module._forward_hooks) == before


def test_list_hook_points_has_shapes_and_aliases(loaded):
    points = {p.name: p for p in list_hook_points(loaded.model)}
    table = aliases(loaded.model)
    resid0 = points[table["resid.0"]]
    assert resid0.shape == (1, 4, loaded.model.config.hidden_size)
    assert "resid.0" in resid0.aliases


# ----------------------------------------------------------------------------- module inputs (mlp_in.L)

PRE_MLP_NORM = {"LlamaForCausalLM": "post_attention_layernorm", "GemmaForCausalLM": "post_attention_layernorm",
                "GPTNeoXForCausalLM": "post_attention_layernorm", "GPT2LMHeadModel": "ln_2"}
"""The norm each architecture applies right before its MLP (what mlp_in must equal)."""


def test_mlp_in_is_what_the_mlp_receives(loaded):
    """mlp_in.L, captured with mlp.L in one pass: the pre-MLP norm's output, and the MLP applied to
    it gives exactly the captured mlp.L (so both rows of a token come from the same forward pass)."""
    model = loaded.model
    table = aliases(model)
    ids = torch.randint(3, 200, (2, 9))
    for layer in range(N_LAYERS):
        mlp_in, mlp_out = resolve_hooks(model, [f"mlp_in.{layer}", f"mlp.{layer}"])
        assert mlp_in == table[f"mlp.{layer}"] + ":input" and mlp_out == table[f"mlp.{layer}"]
        norm = f"{table[f'resid.{layer}']}.{PRE_MLP_NORM[type(model).__name__]}"
        acts = run_to_hooks(model, ids, [mlp_in, mlp_out, norm])
        torch.testing.assert_close(acts[mlp_in], acts[norm], rtol=0, atol=0)
        with torch.no_grad():
            recomputed = dict(model.named_modules())[mlp_out](acts[mlp_in])
        torch.testing.assert_close(recomputed, acts[mlp_out], rtol=0, atol=0)


def test_forward_stops_at_an_input_point(loaded):
    """With only mlp_in.1 hooked, the MLP of block 1 and every later block never run."""
    model = loaded.model
    table = aliases(model)
    modules = dict(model.named_modules())
    ran = []
    watched = {"mlp.0": table["mlp.0"], "mlp.1": table["mlp.1"], "resid.1": table["resid.1"]}
    handles = [modules[name].register_forward_hook(lambda *a, k=key: ran.append(k)) for key, name in watched.items()]
    try:
        got = run_to_hooks(model, torch.randint(3, 200, (1, 4)), resolve_hooks(model, ["mlp_in.1"]))
    finally:
        for h in handles:
            h.remove()
    assert ran == ["mlp.0"] and list(got) == [table["mlp.1"] + ":input"]


def test_input_points_by_name_glob_and_negative_layer(loaded):
    model = loaded.model
    table = aliases(model)
    mlps = [table[f"mlp.{i}"] for i in range(N_LAYERS)]
    glob = mlps[0].replace(".0.", ".*.") + ":input"
    assert resolve_hooks(model, [glob]) == [m + ":input" for m in mlps]
    assert resolve_hooks(model, [mlps[1] + ":input", "mlp_in.1"]) == [mlps[1] + ":input"]
    assert resolve_hooks(model, ["mlp_in.-1"]) == [mlps[-1] + ":input"]
    with pytest.raises(SaeKitError, match="unknown hook 'nothing.here:input'"):
        resolve_hooks(model, ["nothing.here:input"])


def test_intervene_on_an_input_and_reading_one_point_to_write_another(loaded):
    """An input point can be replaced (the MLP then computes from the new input); `read` hands the
    replacement function the MLP's input while it replaces the MLP's output."""
    model = loaded.model
    mlp_in, mlp_out = resolve_hooks(model, ["mlp_in.1", "mlp.1"])
    mlp = dict(model.named_modules())[mlp_out]
    ids = torch.randint(3, 200, (2, 7))
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with intervene(model, mlp_in, lambda h: h * 0), capture(model, [mlp_out], stop=False) as acts:
            model(input_ids=ids)
        torch.testing.assert_close(acts[mlp_out], mlp(torch.zeros_like(acts[mlp_out])), rtol=0, atol=0)
        seen = {}

        def recompute(hidden, source):  # the MLP of its own input (forward: no hooks): the identity
            seen["source"], seen["hidden"] = source, hidden
            return mlp.forward(source)

        with intervene(model, mlp_out, recompute, read=mlp_in):
            same = model(input_ids=ids).logits
        with intervene(model, mlp_out, lambda hidden, source: hidden + 1.0, read=mlp_out):
            shifted = model(input_ids=ids).logits
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    assert seen["source"].shape == seen["hidden"].shape and not torch.equal(seen["source"], seen["hidden"])
    assert not torch.allclose(shifted, clean)
    module = dict(model.named_modules())[mlp_out]
    assert not module._forward_pre_hooks and len(module._forward_hooks) == 0  # all removed


def test_hook_listing_has_the_mlp_inputs(loaded):
    points = list_hook_points(loaded.model)
    names = [p.name for p in points]
    table = aliases(loaded.model)
    entry = points[names.index(table["mlp.0"] + ":input")]
    assert entry.aliases == ("mlp_in.0",) and entry.shape == (1, 4, loaded.model.config.hidden_size)
    assert names.index(table["mlp.0"] + ":input") < names.index(table["mlp.0"])  # it runs first
    assert "mlp_in.0" in format_hook_points(points)
