"""`sae-kit steer`: clamp, ablate or add SAE features while the model generates.

    sae-kit steer --run RUN --analysis A --feature 123=10x --prompt "The weather today" --out DIR
    sae-kit steer --run RUN --analysis A --feature 123=1x --sweep -10,-5,0,5,10 --prompt-file prompts.txt --out DIR

Prints baseline and steered generations side by side; with --out writes DIR/report.md,
DIR/report.html (plotly dose–response figure, works offline) and DIR/results.json.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from sae_kit.errors import SaeKitError
from sae_kit.steering import POSITIONS, Intervention, SteeringHook, parse_values
from sae_kit.steering_generate import GenerateOptions

# Let `--sweep -10,-5,0` through: argparse otherwise takes "-10,-5,0" for an unknown option.
_NEGATIVE_LIST = re.compile(r"^-\.?\d[\d.,eE+\-x ]*$")


def add_steer_command(subparsers) -> None:
    p = subparsers.add_parser(
        "steer",
        help="clamp / ablate / add SAE features during generation; side-by-side report and dose–response sweep",
        description="Steer generation by changing SAE features at the SAE's hook point (clamping keeps the SAE "
        "error term, as in Templeton et al. 2024). VALUE is absolute (4.5) or a multiple of the feature's max "
        "activation over the store (10x, -5x; needs --analysis).",
    )
    p._negative_number_matcher = _NEGATIVE_LIST
    p.add_argument("--run", required=True, help="trained autoencoder run directory (config.json + weights.safetensors)")
    p.add_argument("--analysis",
                   help="analysis directory of that run (`sae-kit analyze`): max activations, logit effects")
    p.add_argument("--feature", action="append", default=[], metavar="ID=VALUE",
                   help="clamp feature ID to VALUE (repeatable), e.g. 123=10x or 456=0")
    p.add_argument("--ablate", action="append", default=[], metavar="ID", help="clamp feature ID to 0 (repeatable)")
    p.add_argument("--add", action="append", default=[], metavar="ID=VALUE",
                   help="add VALUE × W_dec[ID] to the activation (repeatable; the additive steering vector)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line (blank lines skipped)")
    p.add_argument("--sweep", metavar="V,V,...",
                   help="dose–response: vary the first --feature (else the first --add) over these values, in "
                   "the unit of its own VALUE (bare numbers are multiples of the max when it ends in x), "
                   "e.g. -10,-5,0,5,10")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples under --seed")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass when sampling (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed reset before every generation (default 0)")
    p.add_argument("--positions", choices=POSITIONS, default="all",
                   help="steer every position (default) or only generated tokens (the prompt stays unsteered)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--no-bos", dest="prepend_bos", action="store_false",
                   help="do not start plain prompts with BOS (by default they do, like the store's contexts)")
    p.add_argument("--hook", help="hook point to steer (default: the one the SAE was trained on)")
    p.add_argument("--model", help="model spec (default: the one the run's store was harvested from)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: CUDA when present)")
    p.add_argument("--dtype", help="model dtype: float32 (default), bfloat16, float16")
    p.add_argument("--out", help="write report.md, report.html and results.json here")
    p.set_defaults(func=run_steer_command)


def read_prompts(prompts: list[str], prompt_file: str | None) -> list[str]:
    """--prompt values, then the non-blank lines of --prompt-file."""
    prompts = list(prompts)
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise SaeKitError(f"prompt file {prompt_file} does not exist")
        prompts += [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise SaeKitError("no prompt given: pass --prompt TEXT or --prompt-file FILE")
    return prompts


def model_spec_of_run(sae, run_dir: str) -> str:
    """The model the SAE's activations came from: recorded by training, else the store's manifest."""
    metadata = sae.cfg.metadata or {}
    model = metadata.get("model")
    if isinstance(model, dict) and model.get("spec"):
        return model["spec"]
    if isinstance(model, str) and model:
        return model
    store = metadata.get("store")
    if store and Path(store).is_dir():
        from sae_kit.store import read_manifest

        spec = read_manifest(Path(store)).get("model", {}).get("spec")
        if spec:
            return spec
    raise SaeKitError(f"{run_dir} does not record which model it was trained on; name it with --model")


def command_line(args: argparse.Namespace) -> str:
    """The `sae-kit steer` command that reproduces this run (flags in canonical form)."""
    parts = ["sae-kit", "steer", "--run", args.run]
    if args.analysis:
        parts += ["--analysis", args.analysis]
    for flag in ("feature", "ablate", "add", "prompt"):
        for value in getattr(args, flag):
            parts += [f"--{flag}", value]
    for flag in ("prompt_file", "hook", "model", "device", "dtype", "out"):
        if getattr(args, flag):
            parts += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.sweep:
        parts.append(f"--sweep={args.sweep.replace(' ', '')}")
    parts += ["--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed), "--positions", args.positions]
    if args.temperature:
        parts += ["--temperature", f"{args.temperature:g}", "--top-p", f"{args.top_p:g}"]
    if args.chat:
        parts.append("--chat")
    if not args.prepend_bos:
        parts.append("--no-bos")
    return shlex.join(parts)


def run_steer_command(args: argparse.Namespace) -> int:
    from sae_kit.autoencoders import load_autoencoder
    from sae_kit.models import load_model
    from sae_kit.steering_report import format_side_by_side, write_report
    from sae_kit.steering_sweep import compare, load_feature_info, steering_sweep

    interventions = ([Intervention.parse(s, "clamp") for s in args.feature]
                     + [Intervention.parse(s, "ablate") for s in args.ablate]
                     + [Intervention.parse(s, "add") for s in args.add])
    if not interventions:
        raise SaeKitError("nothing to steer: give --feature ID=VALUE, --ablate ID or --add ID=VALUE")
    options = GenerateOptions(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed, positions=args.positions, chat=args.chat, prepend_bos=args.prepend_bos)
    prompts = read_prompts(args.prompt, args.prompt_file)
    sae = load_autoencoder(args.run)
    info = load_feature_info(args.analysis and str(Path(args.analysis).resolve()), sae.cfg.d_sae)
    SteeringHook.build(sae, interventions, info.max_activation)  # check ids and values before the model loads
    spec = args.model or model_spec_of_run(sae, args.run)
    print(f"sae-kit steer: loading {spec} …", file=sys.stderr)
    loaded = load_model(spec, device=args.device, dtype=args.dtype)
    sae = sae.to(loaded.device)
    settings = {"run": str(Path(args.run).resolve()), "command": command_line(args)}
    common = dict(options=options, hook=args.hook, settings=settings,
                  progress=lambda msg: print(f"  generating: {msg}", file=sys.stderr))
    if args.sweep:
        swept = next((i for i in interventions if i.kind == "clamp"), None) or next(
            (i for i in interventions if i.kind == "add"), None)
        if swept is None:
            raise SaeKitError("--sweep needs a --feature ID=VALUE or --add ID=VALUE whose value it varies")
        fixed = [i for i in interventions if i is not swept]
        result = steering_sweep(loaded, sae, info, swept, parse_values(args.sweep, swept.relative), prompts,
                                fixed=fixed, **common)
    else:
        result = compare(loaded, sae, interventions, prompts, analysis=info, **common)
    print(format_side_by_side(result))
    if args.out:
        paths = write_report(result, args.out)
        print(f"wrote {paths['markdown']} and {paths['html']}", file=sys.stderr)
    return 0
