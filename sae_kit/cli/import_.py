"""`sae-kit import FORMAT …`: read another tool's saved SAE into a normal run directory (which
evaluate, analyze, dashboard and steer then open), one subcommand per format (`saelens`,
`sparsify`, `gemmascope`, `dictionary-learning`; flags map one-to-one onto the format's config
dataclass). Every command's --run also opens those formats directly (`load_pretrained`)."""

from __future__ import annotations

import argparse

from sae_kit.autoencoders.dictionary_learning import import_dictionary_learning_run
from sae_kit.autoencoders.gemmascope import import_gemmascope_run
from sae_kit.autoencoders.imported import ImportConfig
from sae_kit.autoencoders.saelens import SaelensImportConfig, import_saelens_run
from sae_kit.autoencoders.sparsify import SparsifyImportConfig, import_sparsify_run
from sae_kit.config import add_config_flags, config_from_args

FORMATS = {
    "saelens": (SaelensImportConfig, import_saelens_run, "a SAELens SAE directory (cfg.json + sae_weights.safetensors)",
                "Import a SAELens SAE directory (standard, topk, jumprelu — e.g. Gemma Scope —, gated, batchtopk, "
                "matryoshka_batchtopk) as a run directory."),
    "sparsify": (SparsifyImportConfig, import_sparsify_run, "an EleutherAI sparsify sparse coder (cfg.json + sae.safetensors)",
                 "Import one hook point of an EleutherAI sparsify checkpoint (TopK SAEs) as a run directory."),
    "gemmascope": (ImportConfig, import_gemmascope_run, "a Gemma Scope params.npz (JumpReLU)",
                   "Import a Gemma Scope SAE (params.npz: W_enc, W_dec, b_enc, b_dec, threshold) as a jumprelu run "
                   "directory."),
    "dictionary-learning": (ImportConfig, import_dictionary_learning_run,
                            "a dictionary_learning ae.pt + config.json",
                            "Import a dictionary_learning dictionary (AutoEncoder, AutoEncoderTopK, BatchTopKSAE, "
                            "MatryoshkaBatchTopKSAE, JumpReluAutoEncoder, GatedAutoEncoder; ae.pt read with "
                            "torch.load(weights_only=True)) as a run directory."),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import", help="read another tool's saved SAE into a run directory (SAELens, sparsify, Gemma Scope, "
             "dictionary_learning)",
        description="Read another tool's saved SAE into a normal sae-kit run directory; evaluate, analyze, dashboard "
                    "and steer then take it with --store / --model.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, (config_class, function, short, long) in FORMATS.items():
        sub = formats.add_parser(name, help=short, description=long)
        add_config_flags(sub, config_class, required=("path", "out"))
        sub.set_defaults(func=_runner(config_class, function))


def _runner(config_class, function):
    def run(args: argparse.Namespace) -> int:
        print(function(config_from_args(config_class, args)))
        return 0
    return run
