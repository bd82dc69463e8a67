"""Hook points on four architectures: aliases, capture equals hidden_states, stopping early, errors."""

import pytest
import torch

from sae_kit.errors import SaeKitError
from sae_kit.lm.hooks import aliases, capture, intervene, list_hook_points, resolve_hooks, run_to_hooks
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
