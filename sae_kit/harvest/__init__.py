"""Harvest: a language model's activations at hook points, captured into a sharded safetensors store.

    harvester  HarvestConfig, harvest (one forward pass per batch, stopping after the last hook)
    store      the files: manifest, shards, the rank-aware StoreWriter, merge_rank_manifests
    reader     ActivationStore: checksummed shards, chunks, gather, contexts, shuffled batches, verify
    batches    the seeded batch plan and the prefetching gatherer behind ActivationStore.batches
"""

from sae_kit.harvest.harvester import HarvestConfig, harvest
from sae_kit.harvest.reader import ActivationStore, Chunk
from sae_kit.harvest.store import MANIFEST, StoreWriter, merge_rank_manifests, read_manifest

__all__ = ["ActivationStore", "Chunk", "HarvestConfig", "MANIFEST", "StoreWriter", "harvest", "merge_rank_manifests",
           "read_manifest"]
