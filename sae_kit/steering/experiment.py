"""A steering experiment as one config: `SteerConfig` names the run, the interventions, the prompts
and where to write; `run_experiment(cfg, options)` checks everything it can before the language
model loads, then generates, scores and (with `out`) writes the report. `sae-kit steer` is this.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sae_kit.autoencoders import RunInfo, load_autoencoder
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError
from sae_kit.lm.models import load_model
from sae_kit.steering.generate import GenerateOptions
from sae_kit.steering.hook import Intervention, SteeringHook, parse_values
from sae_kit.steering.report import format_side_by_side, write_report
from sae_kit.steering.sweep import SteeringResult, compare, load_feature_info, steering_sweep


@dataclass(frozen=True)
class SteerConfig(JsonConfig):
    """What to steer, on which prompts, with which model; the decoding is `GenerateOptions`."""

    nonempty = ('run',)

    run: str
    """Trained autoencoder run directory (config.json + weights.safetensors)."""
    analysis: str | None = None
    """Analysis directory of that run (`sae-kit analyze`): max activations (the unit of 10x) and logit effects."""
    feature: tuple[str, ...] = ()
    """Clamp feature ID to VALUE: ID=VALUE, e.g. 123=10x (10 × its max) or 456=0 (repeatable)."""
    ablate: tuple[str, ...] = ()
    """Clamp feature ID to 0 (repeatable)."""
    add: tuple[str, ...] = ()
    """Add VALUE × W_dec[ID] to the activation: ID=VALUE (repeatable; the additive steering vector)."""
    prompt: tuple[str, ...] = ()
    """A prompt (repeatable)."""
    prompt_file: str | None = None
    """A text file with one prompt per line (blank lines skipped)."""
    sweep: str | None = None
    """Dose–response: vary the first --feature (else the first --add) over these values, in the unit of
    its own VALUE (bare numbers are multiples of the max when it ends in x), e.g. -10,-5,0,5,10."""
    hook: str | None = None
    """Hook point to steer (default: the one the SAE was trained on)."""
    model: str | None = None
    """Language model (default: the one the run's store was harvested from)."""
    device: str | None = None
    """cpu, cuda, cuda:1 … (default: CUDA when present)."""
    model_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Dtype of the language model's weights (default float32)."""
    out: str | None = None
    """Write report.md, report.html and results.json here."""

    def interventions(self) -> list[Intervention]:
        """The clamps, ablations and additions, parsed (one-line errors for malformed ones)."""
        found = ([Intervention.parse(s, "clamp") for s in self.feature]
                 + [Intervention.parse(s, "ablate") for s in self.ablate]
                 + [Intervention.parse(s, "add") for s in self.add])
        if not found:
            raise SaeKitError("nothing to steer: give --feature ID=VALUE, --ablate ID or --add ID=VALUE")
        return found

    def prompts(self) -> list[str]:
        """--prompt values, then the non-blank lines of --prompt-file."""
        prompts = list(self.prompt)
        if self.prompt_file:
            path = Path(self.prompt_file)
            if not path.is_file():
                raise SaeKitError(f"prompt file {self.prompt_file} does not exist")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise SaeKitError(f"prompt file {self.prompt_file} is not UTF-8 text") from None
            prompts += [line.rstrip("\n") for line in text.splitlines() if line.strip()]
        if not prompts:
            raise SaeKitError("no prompt given: pass --prompt TEXT or --prompt-file FILE")
        return prompts


def run_experiment(cfg: SteerConfig, options: GenerateOptions = GenerateOptions(), *,
                   command: str | None = None) -> SteeringResult:
    """Check, load, generate and score `cfg`; print the texts side by side; write the report to
    cfg.out if set. `command` is recorded in the report as the way to reproduce it."""
    interventions = cfg.interventions()
    prompts = cfg.prompts()
    sae = load_autoencoder(cfg.run)
    info = load_feature_info(cfg.analysis and str(Path(cfg.analysis).resolve()), sae.cfg.d_sae)
    SteeringHook.build(sae, interventions, info.max_activation)  # check ids and values before the model loads
    swept = None
    if cfg.sweep:
        swept = next((i for i in interventions if i.kind == "clamp"), None) or next(
            (i for i in interventions if i.kind == "add"), None)
        if swept is None:
            raise SaeKitError("--sweep needs a --feature ID=VALUE or --add ID=VALUE whose value it varies")
        values = parse_values(cfg.sweep, swept.relative)
    spec = RunInfo.of(sae).language_model(cfg.model)
    print(f"sae-kit steer: loading {spec} …", file=sys.stderr)
    loaded = load_model(spec, device=cfg.device, dtype=cfg.model_dtype)
    sae = sae.to(loaded.device)
    settings = {"run": str(Path(cfg.run).resolve()), "command": command}
    common = dict(options=options, hook=cfg.hook, settings=settings,
                  progress=lambda msg: print(f"  generating: {msg}", file=sys.stderr))
    if swept is not None:
        fixed = [i for i in interventions if i is not swept]
        result = steering_sweep(loaded, sae, info, swept, values, prompts, fixed=fixed, **common)
    else:
        result = compare(loaded, sae, interventions, prompts, analysis=info, **common)
    print(format_side_by_side(result))
    if cfg.out:
        paths = write_report(result, cfg.out)
        print(f"wrote {paths['markdown']} and {paths['html']}", file=sys.stderr)
    return result
