"""`sae-kit demo`: the whole pipeline on the embedded defaults, stage by stage, resumable.

1. harvest the corpus (python-docs, ~250k tokens) at the residual stream after layer 8;
2. train the L1 SAE (8× expansion) and the baselines — dense AE, denoising AE, VAE, PCA — on
   the same batches in one pass over the data (the baselines at a matched latent budget);
3. evaluate all of them on the held-out split (reconstruction and spliced-model CE / KL);
4. analyse the SAE and build the dashboard site for the most interesting features;
5. pick a few features automatically and run steering sweeps on fixed prompts;
6. write the report (`sae_kit.demo.report`).

Every stage writes into WORK/<stage> and records itself in WORK/demo-state.json when it
finishes; a re-run skips finished stages and resumes an interrupted harvest or training run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sae_kit.artifacts import atomic_write_json
from sae_kit.config import JsonConfig
from sae_kit.demo.stages import STAGE_FUNCTIONS, DemoContext
from sae_kit.errors import SaeKitError

STAGES = tuple(STAGE_FUNCTIONS)
STATE_FILE = "demo-state.json"


@dataclass(frozen=True)
class DemoConfig(JsonConfig):
    """Settings of the demo; the defaults are the full run on this 2-core machine (< 20 min)."""

    nonempty = ('work', 'report', 'model')

    work: str = "runs/demo"
    """Working directory: store, runs, analysis, site, steering (kept for resuming)."""
    report: str = "reports/smollm2-135m-resid8"
    """Where the report is written."""
    model: str = "default"
    """Language model (default: the embedded SmolLM2-135M-Instruct)."""
    dataset: str = "python-docs"
    """Corpus (default: the standard library's docstrings)."""
    hook: str = "resid.8"
    """Hook point: the residual stream after block 8 of 30."""
    tokens: int = 250_000
    """Tokens to harvest."""
    context_len: int = 128
    """Tokens per context."""
    expansion: int = 8
    """SAE latents per input dimension (576 × 8 = 4608)."""
    l1_coefficient: float = 5.0
    """λ of the L1 SAE (April 2024 recipe)."""
    baseline_latents: int = 64
    """Latents of the dense, denoising and variational AEs and PCA components: a budget of
    dense numbers per token in the range of the SAE's L0 (the matched-budget comparison)."""
    train_tokens: int = 1_000_000
    """Training tokens (four passes over the 237k-token train split)."""
    batch_size: int | None = None
    """Tokens per step; None: derived from the training tokens as `sae-kit train` does (1024 here)."""
    lr: float | None = None
    """Adam learning rate; None: derived from the number of steps as `sae-kit train` does (5e-4 here)."""
    ce_contexts: int = 64
    """Held-out contexts for the spliced-model CE / KL metrics."""
    dashboard_features: int = 200
    """Features in the dashboard site (density in [1e-4, 1e-2], by max activation)."""
    gallery_features: int = 10
    """Features shown in the report's gallery."""
    steer_features: int = 3
    """Features picked automatically for steering sweeps."""
    steer_values: tuple[float, ...] = (-1.0, 0.0, 0.25, 0.5, 1.0, 2.0)
    """Clamp values, in multiples of each feature's max activation. On this 135M model the text
    degenerates from about 1× up (DESIGN's −10…10 range is for much larger models)."""
    steer_prompts: tuple[str, ...] = (
        "The main purpose of this module is",
        "def read_config(path):\n    \"\"\"",
        "My favourite thing about the weekend is",
    )
    """Fixed prompts for the steering sweeps."""
    max_new_tokens: int = 24
    """Tokens generated per prompt and condition."""
    device: str | None = None
    """Device (default: CUDA if present, else CPU)."""
    seed: int = 0
    """Seed for training and generation."""
    quick: bool = False
    """A reduced run (used by the tests): see `quick_config`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tokens", "context_len", "expansion", "baseline_latents", "train_tokens", "ce_contexts",
                     "dashboard_features", "gallery_features", "steer_features", "max_new_tokens"):
            if getattr(self, name) < (0 if name == "ce_contexts" else 1):
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        for name in ("work", "report"):
            if Path(getattr(self, name)).is_file():
                raise SaeKitError(f"--{name} {getattr(self, name)} is a file; name a directory")


def quick_config(**overrides) -> DemoConfig:
    """The demo shrunk to run in under 3 minutes on 2 cores (most of it loading the model)."""
    settings = dict(work="runs/demo-quick", report="runs/demo-quick/report", tokens=12_288, expansion=2,
                    baseline_latents=16, train_tokens=40_960, batch_size=512, lr=1e-3, ce_contexts=4,
                    dashboard_features=12, gallery_features=4, steer_features=1, steer_values=(0.0, 5.0),
                    steer_prompts=("The main purpose of this module is",), max_new_tokens=6, quick=True)
    settings.update(overrides)
    return DemoConfig(**settings)


class Stages:
    """Finished stages and their wall times, persisted in WORK/demo-state.json."""

    def __init__(self, cfg: DemoConfig, fresh: bool):
        self.work = Path(cfg.work)
        self.file = self.work / STATE_FILE
        if fresh and self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        state = json.loads(self.file.read_text()) if self.file.is_file() else {}
        if state and state.get("config") != _jsonable(cfg.to_dict()):
            changed = sorted(k for k, v in _jsonable(cfg.to_dict()).items() if state["config"].get(k) != v)
            raise SaeKitError(f"{self.work} holds a demo run with other settings ({', '.join(changed)}); "
                              "pass --fresh to start over or choose another --work")
        self.state = state or {"config": _jsonable(cfg.to_dict()), "stages": {}}
        if not state:  # a resumed run's state file is written again only when a stage finishes
            self._save()

    def done(self, name: str) -> bool:
        return name in self.state["stages"]

    def finish(self, name: str, seconds: float, **facts) -> None:
        self.state["stages"][name] = {"seconds": round(seconds, 1), **facts}
        self._save()

    def seconds(self) -> dict[str, float]:
        return {name: info["seconds"] for name, info in self.state["stages"].items()}

    def _save(self) -> None:
        atomic_write_json(self.file, self.state)


def _jsonable(value):
    return json.loads(json.dumps(value))


def run_demo(cfg: DemoConfig, *, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) every stage; returns the report directory."""
    stages = Stages(cfg, fresh)
    work = Path(cfg.work)
    context = DemoContext(cfg, work, progress)
    started = time.perf_counter()
    for number, name in enumerate(STAGES, start=1):
        if stages.done(name):
            print(f"[{number}/{len(STAGES)}] {name}: done earlier ({stages.state['stages'][name]['seconds']:.0f} s), kept",
                  file=sys.stderr)
            continue
        print(f"[{number}/{len(STAGES)}] {name} …", file=sys.stderr)
        stage_start = time.perf_counter()
        facts = STAGE_FUNCTIONS[name](context, stages) or {}
        seconds = time.perf_counter() - stage_start
        stages.finish(name, seconds, **facts)
        print(f"[{number}/{len(STAGES)}] {name}: {seconds:.0f} s", file=sys.stderr)
    total = sum(stages.seconds().values())
    print(f"demo finished: {total / 60:.1f} min of stage time ({(time.perf_counter() - started) / 60:.1f} min in this "
          f"invocation); report: {cfg.report}/README.md", file=sys.stderr)
    return Path(cfg.report)
