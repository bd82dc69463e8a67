"""Training: the recipe, the loop, checkpoints and dead latents.

    recipe         TrainConfig (its defaults are the recipe), lr and λ schedules, the models of a run,
                   input statistics (the E‖x‖ = √d_in scale, mean, geometric median)
    loop           fit: the one flat loop over batches for one or several models
    run            train: from an activation store or on the fly, with checkpoints, resume and saved runs
    stream         on the fly: the mixing buffer, the corpus split over ranks, the held-out store
    distributed    torchrun: the session (same one-line error on every rank), collectives, data parallel
    sharding       latents split over ranks (--shard-latents)
    checkpoint     checkpoints without pickle (safetensors + JSON), swapped in atomically
    dead_latents   which latents have not fired lately, and Anthropic's 2023 resampling
"""

from sae_kit.training.input_stats import InputStats
from sae_kit.training.loop import Slot, fit, make_slot
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.run import train
from sae_kit.training.specs import ModelSpec, model_specs

__all__ = ["InputStats", "ModelSpec", "Slot", "TrainConfig", "fit", "make_slot", "model_specs", "train"]
