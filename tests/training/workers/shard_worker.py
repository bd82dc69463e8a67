"""Run under torchrun with 2 ranks (tests/training/test_distributed.py): latent sharding against one
unsharded process. Writes OUT/result.json (rank 0) with the largest differences found."""

import json
import sys
from pathlib import Path

import torch

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder, load_autoencoder
from sae_kit.autoencoders.base import TrainingState
from sae_kit.training import TrainConfig, train
from sae_kit.training.distributed import SINGLE, session
from sae_kit.training.sharding import SHARDED_DIMS, LatentSharding


def one_step(ranks, arch: str) -> dict:
    """Loss and gradients of one batch: 2 sharded ranks vs the whole model in this process."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(arch=arch, d_in=16, d_sae=64, k=6, auxk_k=8, l1_coefficient=2.0)
    full = build_autoencoder(cfg).train()
    with torch.no_grad():
        full.b_dec.normal_()
        full.b_enc.normal_(std=0.1)
    full.fused = False
    x = torch.randn(32, 16)
    dead = torch.rand(64) < 0.4  # AuxK for topk: dead latents spread over both shards
    state = TrainingState(sparsity_scale=0.7, dead_mask=dead)
    want = full.training_loss(x, state)
    want.loss.backward()
    sharding = LatentSharding(ranks, cfg)
    local = sharding.local_model(full)
    local_dead = dead[sharding.shard.start : sharding.shard.start + sharding.shard.local]
    got = sharding.training_loss(local, x, TrainingState(sparsity_scale=0.7, dead_mask=local_dead))
    got.loss.backward()
    diffs = {"loss": abs(float(got.loss) - float(want.loss)),
             **{f"loss_{k}": abs(float(got.losses[k]) - float(v)) for k, v in want.losses.items()},
             "terms": sorted(got.losses) == sorted(want.losses)}
    for name, p in local.named_parameters():
        dim = SHARDED_DIMS.get(name)
        whole = p.grad if dim is None else sharding.shard.gather(p.grad, dim)
        diffs[f"grad_{name}"] = float((whole - getattr(full, name).grad).abs().max())
    x_hat = float((got.x_hat - want.x_hat).abs().max())
    return {**diffs, "x_hat": x_hat}


def main(store: str, out: str) -> None:
    out = Path(out)
    with session("test") as ranks:
        result = {arch: one_step(ranks, arch) for arch in ("sae", "topk")}
        common = dict(store=store, hook="resid.1", archs=("sae", "topk"), ks=(4,), expansion=8, batch_size=256,
                      tokens=256 * 10, lr=3e-3, log_every=5, norm_estimation_tokens=1024, dead_window_tokens=256,
                      checkpoint_every_tokens=256 * 4)
        train(TrainConfig(out=str(out / "sharded"), shard_latents=True, **common), progress=False, ranks=ranks)
        if ranks.is_main:
            train(TrainConfig(out=str(out / "single"), **common), progress=False, ranks=SINGLE)
            for name in ("sae-l1_5", "topk-k_4"):
                a, b = (load_autoencoder(out / run / name).state_dict() for run in ("sharded", "single"))
                result[name] = {k: float((a[k] - b[k]).abs().max()) for k in a}
                metrics = [json.loads(line) for line in (out / "sharded" / name / "metrics.jsonl").read_text().splitlines()]
                result[name]["auxk_logged"] = any("loss_auxk" in m for m in metrics)
            (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
