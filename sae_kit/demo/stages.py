"""The stages of `sae-kit demo`, each a thin call into the library (see `sae_kit.demo.run`).

Each `stage_<name>(ctx, stages)` does its work under WORK/<name> and returns a few facts for
WORK/demo-state.json. The language model is loaded once and shared by every stage.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sae_kit.analysis import AnalysisConfig, analyze, load_analysis, strongest_features
from sae_kit.artifacts import atomic_write_json
from sae_kit.autoencoders import load_autoencoder, read_run_config, run_dirs
from sae_kit.dashboard.site import build_site
from sae_kit.demo.report import write_demo_report
from sae_kit.errors import SaeKitError
from sae_kit.evaluation import EvalConfig, evaluate
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.lm.corpus import CorpusSpec
from sae_kit.lm.models import load_model
from sae_kit.steering.generate import GenerateOptions
from sae_kit.steering.hook import Intervention
from sae_kit.steering.report import write_report
from sae_kit.steering.sweep import Condition, run_steering
from sae_kit.training import TrainConfig, train
from sae_kit.training.checkpoint import find_checkpoint
from sae_kit.training.derive import derived_batch_size

STEER_MIN_DENSITY = 1e-3
STEER_MAX_DENSITY = 1e-2
"""Steering picks among features firing on 0.1–1 % of tokens: common enough that their top
examples show a pattern, rare enough not to be a generic direction."""
DASHBOARD_MIN_DENSITY = 1e-4
DASHBOARD_MAX_DENSITY = 1e-2
SAE_ARCH = "sae"
"""The demo's sparse autoencoder: the L1 SAE the user asked for."""
BASELINE_ARCHS = ("ae", "dae", "vae", "pca")
"""Trained beside it on the same batches, at a matched latent budget."""


@dataclass
class DemoContext:
    """Paths and shared, lazily loaded objects of one demo run."""

    cfg: object
    work: Path
    progress: bool = True
    _cache: dict = field(default_factory=dict)
    sae_arch: str = SAE_ARCH
    """The architecture of the demo's SAE (the report compares it with the others)."""

    @property
    def store(self) -> Path:
        return self.work / "store"

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    @property
    def analysis(self) -> Path:
        return self.work / "analysis"

    @property
    def site(self) -> Path:
        return self.work / "site"

    @property
    def steer(self) -> Path:
        return self.work / "steer"

    @cached_property
    def lm(self):
        return load_model(self.cfg.model, device=self.cfg.device)

    def run_dirs(self) -> dict[str, Path]:
        return run_dirs(self.runs)

    def sae_run(self) -> Path:
        """The run of the demo's SAE (the other runs are its baselines)."""
        for path in self.run_dirs().values():
            if read_run_config(path)["autoencoder"]["arch"] == SAE_ARCH:
                return path
        raise SaeKitError(f"no L1 SAE among the runs in {self.runs}")

    @cached_property
    def sae(self):
        return load_autoencoder(self.sae_run(), device=self.lm.device)


def stage_harvest(ctx: DemoContext, stages) -> dict:
    cfg = ctx.cfg
    harvest_cfg = HarvestConfig(out=str(ctx.store), model=cfg.model, hooks=(cfg.hook,),
                                corpus=CorpusSpec(cfg.dataset), tokens=cfg.tokens, context_len=cfg.context_len,
                                device=cfg.device)
    harvest(harvest_cfg, resume=ctx.store.exists(), loaded=ctx.lm, progress=ctx.progress)
    store = ActivationStore(ctx.store)
    return {"tokens": store.n_tokens, "shards": len(store.shards)}


def stage_train(ctx: DemoContext, stages) -> dict:
    cfg = ctx.cfg
    batch = cfg.batch_size or derived_batch_size(cfg.train_tokens)  # what `train` will derive when left open
    train_cfg = TrainConfig(
        store=str(ctx.store), out=str(ctx.runs), archs=(SAE_ARCH, *BASELINE_ARCHS),
        l1_coefficients=(cfg.l1_coefficient,), expansion=cfg.expansion, baseline_d_sae=cfg.baseline_latents,
        pca_components=cfg.baseline_latents, tokens=cfg.train_tokens, batch_size=cfg.batch_size, lr=cfg.lr,
        seed=cfg.seed, device=cfg.device, checkpoint_every_tokens=max(cfg.train_tokens // 4, batch),
        log_every=max(1, cfg.train_tokens // batch // 60),
    )
    resume = find_checkpoint(ctx.runs) is not None
    if not resume and ctx.runs.exists():
        shutil.rmtree(ctx.runs)  # killed before its first checkpoint: nothing worth keeping
    train(train_cfg, resume=resume, progress=ctx.progress)
    return {"models": sorted(ctx.run_dirs())}


def stage_evaluate(ctx: DemoContext, stages) -> dict:
    results = evaluate(EvalConfig(run=str(ctx.runs), ce_contexts=ctx.cfg.ce_contexts, device=ctx.cfg.device),
                       lm=ctx.lm)
    return {"models": sorted(results)}


def stage_analyze(ctx: DemoContext, stages) -> dict:
    result = analyze(AnalysisConfig(run=str(ctx.sae_run()), out=str(ctx.analysis), device=ctx.cfg.device),
                     autoencoder=ctx.sae, lm=ctx.lm, overwrite=True, progress=ctx.progress)
    alive = int((result.density > 0).sum())
    return {"features": int(result.density.numel()), "alive": alive}


def stage_dashboard(ctx: DemoContext, stages) -> dict:
    features = strongest_features(load_analysis(ctx.analysis), ctx.cfg.dashboard_features, DASHBOARD_MIN_DENSITY,
                                 DASHBOARD_MAX_DENSITY)
    build_site(ctx.analysis, ctx.site, features=features, prompts=ctx.cfg.steer_prompts, autoencoder=ctx.sae,
               lm=ctx.lm, overwrite=True, progress=ctx.progress)
    manifest = ctx.site / "site.json"
    pages = len(json.loads(manifest.read_text())["features"]) if manifest.is_file() else 0
    return {"feature_pages": pages}


def steering_features(ctx: DemoContext) -> list[int]:
    """The features the demo steers: the strongest (by max activation) of those with density in
    [1e-3, 1e-2], topped up as `strongest_features` does."""
    return strongest_features(load_analysis(ctx.analysis), ctx.cfg.steer_features, STEER_MIN_DENSITY,
                             STEER_MAX_DENSITY)


def stage_steer(ctx: DemoContext, stages) -> dict:
    cfg = ctx.cfg
    analysis = load_analysis(ctx.analysis)
    features = steering_features(ctx)
    if ctx.steer.exists():
        shutil.rmtree(ctx.steer)
    options = GenerateOptions(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    for feature in features:
        conditions = [Condition(f"clamp {feature}={v:g}x", (Intervention(feature, "clamp", v, True),), v)
                      for v in cfg.steer_values]
        result = run_steering(ctx.lm, ctx.sae, conditions, list(cfg.steer_prompts), analysis=analysis,
                              options=options, primary_feature=feature, dose_unit="× max activation",
                              settings={"command": "sae-kit demo" + (" --quick" if cfg.quick else ""),
                                        "run": str(ctx.sae_run()), "analysis": str(ctx.analysis)})
        write_report(result, ctx.steer / f"feature-{feature}")
    atomic_write_json(ctx.steer / "features.json", features)
    return {"features": features}


def stage_report(ctx: DemoContext, stages) -> dict:
    path = write_demo_report(ctx, stages)
    return {"report": str(path)}


STAGE_FUNCTIONS = {"harvest": stage_harvest, "train": stage_train, "evaluate": stage_evaluate,
                   "analyze": stage_analyze, "dashboard": stage_dashboard, "steer": stage_steer,
                   "report": stage_report}
"""The stages in the order they run: name -> function(ctx, stages) -> facts for demo-state.json."""
