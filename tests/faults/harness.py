"""SIGKILL at random moments, then resume: the kill harness of the fault suite.

A `Stage` is one command line of a stage (harvest, training from a store, training on the fly,
analysis, the demo) with the command that continues it after a kill. `reference` runs it once
uninterrupted and times it; `kill_chain` starts it again in a fresh directory, SIGKILLs it
(`kill -9`, from outside) after a delay drawn inside the reference's working period, continues
it (possibly killing the continuation too), runs the continuation to the end, and compares the
result with the reference: stores row by row, weights bitwise, analyses file by file. Used by
tests/faults/test_faults.py (a few kills) and scripts/fault_injection.py (the full table).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
VOLATILE_KEYS = {"created", "seconds", "tokens_per_second", "tokens_per_s", "finished", "timings", "stage_seconds",
                 "wall_seconds", "elapsed"}
"""JSON fields that record when or how fast, not what: left out when results are compared."""


# ----------------------------------------------------------------------------- running the command line


def cli_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "sae_kit.cli", *argv]


def cli_env(faults: str | None = None) -> dict[str, str]:
    """The environment of a child `sae-kit`: this checkout first on the path, offline, one
    thread per process (the kills must not depend on how busy the machine is), faults to inject."""
    env = {k: v for k, v in os.environ.items() if k not in ("SAE_KIT_FAULTS", "SAE_KIT_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    if faults:
        env["SAE_KIT_FAULTS"] = faults
    return env


@dataclass
class Finished:
    """How one child process ended."""

    code: int
    stderr: str
    seconds: float

    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if "error:" in line or "Traceback" in line]
        return lines[-1] if lines else (self.stderr.strip().splitlines() or [""])[-1]


def run_cli(argv: list[str], log: Path, faults: str | None = None, timeout: float = 900) -> Finished:
    """Run `sae-kit argv` to the end (stderr kept in `log`)."""
    started = time.perf_counter()
    with open(log, "w") as err:
        code = subprocess.run(cli_command(argv), stdout=subprocess.DEVNULL, stderr=err, env=cli_env(faults),
                              cwd=REPO, timeout=timeout).returncode
    return Finished(code, log.read_text(errors="replace"), time.perf_counter() - started)


# ----------------------------------------------------------------------------- comparing results


@dataclass
class Comparison:
    """A result against the uninterrupted reference."""

    identical: bool
    tokens_lost: int = 0
    tokens_duplicated: int = 0
    detail: str = ""


def _tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def compare_stores(ref: Path, out: Path) -> Comparison:
    """Same rows (tokens, context, position and every hook's activations, in shard order), and
    which (context, position) rows are missing or stored twice."""
    from sae_kit.harvest import ActivationStore

    stores = [ActivationStore(p) for p in (ref, out)]
    problems = stores[1].verify()
    rows = []
    for store in stores:
        shards = [store.load_shard(s) for s in range(len(store.shards))]
        rows.append({k: torch.cat([s[k] for s in shards]) for k in shards[0]} if shards else {})
    keys = [(r["context"].long() * 1_000_003 + r["position"].long()).tolist() if r else [] for r in rows]
    lost = len(set(keys[0]) - set(keys[1]))
    duplicated = len(keys[1]) - len(set(keys[1]))
    same = not problems and _tensors_equal(rows[0], rows[1]) and stores[0].n_tokens == stores[1].n_tokens
    detail = "; ".join(problems) or ("" if same else "rows differ")
    return Comparison(same, lost, duplicated, detail)


def _logged_tokens(metrics: Path) -> list[int]:
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["tokens"] for r in rows if "event" not in r]


def compare_runs(ref: Path, out: Path) -> Comparison:
    """Every saved model's weights bitwise equal; tokens lost / duplicated as logged intervals of
    metrics.jsonl missing or repeated (in tokens)."""
    files = sorted(p.relative_to(ref) for p in ref.rglob("weights.safetensors"))
    if not files:
        return Comparison(False, detail=f"the reference {ref} holds no weights")
    missing = [str(f) for f in files if not (out / f).is_file()]
    if missing:
        return Comparison(False, detail=f"missing {missing[0]}")
    same = all(_tensors_equal(load_file(ref / f), load_file(out / f)) for f in files)
    lost = duplicated = 0
    for f in files:
        logged_ref, logged_out = _logged_tokens(ref / f.parent / "metrics.jsonl"), _logged_tokens(out / f.parent / "metrics.jsonl")
        interval = logged_ref[0] if logged_ref else 0
        lost = max(lost, sum((Counter(logged_ref) - Counter(logged_out)).values()) * interval)
        duplicated = max(duplicated, sum((Counter(logged_out) - Counter(logged_ref)).values()) * interval)
    return Comparison(same and lost == 0 and duplicated == 0, lost, duplicated, "" if same else "weights differ")


def _normalised_json(path: Path, root: Path):
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(path.read_text().replace(str(root), "<work>")))


def compare_dirs(ref: Path, out: Path, ref_root: Path, out_root: Path) -> Comparison:
    """The same files: tensors equal, JSON equal but for timings and the working directory, other
    files byte for byte; an unfinished-run marker left behind counts as a difference."""
    ref_files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    out_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    if ref_files != out_files:
        extra = sorted(set(map(str, out_files)) ^ set(map(str, ref_files)))
        return Comparison(False, detail=f"files differ: {extra[:3]}")
    for f in ref_files:
        a, b = ref / f, out / f
        if f.suffix == ".safetensors":
            same = _tensors_equal(load_file(a), load_file(b))
        elif f.suffix == ".json":
            same = _normalised_json(a, ref_root) == _normalised_json(b, out_root)
        else:
            same = a.read_bytes() == b.read_bytes()
        if not same:
            return Comparison(False, detail=f"{f} differs")
    return Comparison(True)


def compare_demo(ref: Path, out: Path) -> Comparison:
    """The demo's store (rows), every trained model (weights) and the analysis (files)."""
    parts = [compare_stores(ref / "store", out / "store"), compare_runs(ref / "runs", out / "runs"),
             compare_dirs(ref / "analysis", out / "analysis", ref, out)]
    return Comparison(all(p.identical for p in parts), parts[0].tokens_lost, parts[0].tokens_duplicated,
                      "; ".join(p.detail for p in parts if p.detail))


# ----------------------------------------------------------------------------- stages and kill chains


@dataclass(frozen=True)
class Stage:
    """One stage's command line, how it continues after a kill, and what is compared."""

    name: str
    argv: tuple[str, ...]
    """The command line after `sae-kit`; {work} is the chain's directory."""
    output: str
    """What is compared, relative to {work}."""
    compare: Callable[[Path, Path], Comparison]
    resume_flag: str | None = "--resume"
    """Added when continuing (None: the same command is simply run again)."""
    needs_checkpoint: bool = False
    """Training: before its first checkpoint a run is started again, not resumed (as its
    --resume error tells the user)."""
    started: str | None = None
    """A path under {work} whose appearance marks the start of real work (kills are drawn after it)."""

    def command(self, work: Path, again: bool) -> list[str]:
        argv = [a.format(work=work) for a in self.argv]
        if again and self.resume_flag:
            if not self.needs_checkpoint or (work / self.output / "checkpoint").is_dir():
                argv.append(self.resume_flag)
        return argv


@dataclass
class Reference:
    """The uninterrupted run: where its result is and how long it took."""

    work: Path
    seconds: float
    started_after: float


def reference(stage: Stage, work: Path) -> Reference:
    """Run `stage` uninterrupted in `work`, noting when real work started (for the kill window)."""
    work.mkdir(parents=True, exist_ok=True)
    marker = work / (stage.started or stage.output)
    started = time.perf_counter()
    with open(work / "reference.log", "w") as err:
        proc = subprocess.Popen(cli_command(stage.command(work, again=False)), stdout=subprocess.DEVNULL, stderr=err,
                                env=cli_env(), cwd=REPO)
        started_after = None
        while proc.poll() is None:
            if started_after is None and marker.exists():
                started_after = time.perf_counter() - started
            time.sleep(0.02)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"reference run of {stage.name} failed: {(work / 'reference.log').read_text()[-2000:]}")
    return Reference(work, seconds, started_after if started_after is not None else 0.5 * seconds)


@dataclass
class ChainResult:
    """One chain: kills delivered, how the continuations went, and the final comparison."""

    stage: str
    kills: int
    finished_before_kill: int
    failed: list[str] = field(default_factory=list)
    comparison: Comparison | None = None


def kill_chain(stage: Stage, ref: Reference, work: Path, rng: random.Random, kills: int = 1,
               window: float = 0.95) -> ChainResult:
    """Start `stage` in `work`, SIGKILL it `kills` times at random moments of its working period
    (uniform over the first `window` of the reference's time after real work started; each
    continuation may be killed again), finish it, and compare with the reference."""
    work.mkdir(parents=True, exist_ok=True)
    result = ChainResult(stage.name, 0, 0)
    again = False
    low = ref.started_after
    high = max(low + 0.2, low + window * (ref.seconds - low))
    for attempt in range(kills):
        delay = rng.uniform(low, high)
        with open(work / f"attempt-{attempt}.log", "w") as err:
            proc = subprocess.Popen(cli_command(stage.command(work, again)), stdout=subprocess.DEVNULL, stderr=err,
                                    env=cli_env(), cwd=REPO)
            try:
                code = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                result.kills += 1
                again = True
                continue
        result.finished_before_kill += 1
        if code != 0:
            result.failed.append(Finished(code, (work / f"attempt-{attempt}.log").read_text(), 0).error_line())
        break
    else:
        final = run_cli(stage.command(work, again=True), work / "final.log")
        if final.code != 0:
            result.failed.append(final.error_line())
    if not result.failed:
        result.comparison = stage.compare(ref.work / stage.output, work / stage.output)
    return result


def stages_for(world: dict[str, str], scale: float = 1.0) -> list[Stage]:
    """The five stages on the tiny Llama of `world` ({lm}, {store} with resid.1, {run} trained on
    it). `scale` multiplies the token counts (the script's full form runs longer stages)."""
    def n(tokens: int) -> str:
        return str(int(tokens * scale) // 2048 * 2048)

    lm, store, run = world["lm"], world["store"], world["run"]
    common_train = ["--hook", "resid.1", "--arch", "sae", "--expansion", "4", "--batch-size", "256", "--log-every", "4"]
    return [
        Stage("harvest", ("harvest", "--model", lm, "--hook", "resid.1", "--tokens", n(65536), "--context-len", "32",
                          "--shard-tokens", "2048", "--batch-size", "8", "--out", "{work}/store"),
              "store", compare_stores, started="store/manifest.json"),
        Stage("train (store)", ("train", "--store", store, *common_train, "--tokens", n(262144),
                                "--checkpoint-every-tokens", "8192", "--out", "{work}/run"),
              "run", compare_runs, needs_checkpoint=True, started="run"),
        Stage("train (on the fly)", ("train", "--model", lm, "--context-len", "32", "--lm-batch-size", "8",
                                     *common_train, "--tokens", n(32768), "--checkpoint-every-tokens", "2048",
                                     "--eval-contexts", "8", "--out", "{work}/run"),
              "run", compare_runs, needs_checkpoint=True, started="run/eval-store"),
        Stage("analyze", ("analyze", "--run", run, "--store", store, "--out", "{work}/analysis", "--batch-size", "256"),
              "analysis", lambda a, b: compare_dirs(a, b, a.parent, b.parent), resume_flag=None, started="analysis"),
        Stage("demo", ("demo", "--quick", "--work", "{work}/demo", "--report", "{work}/report", "--model", lm,
                       "--hook", "resid.1", "--steer-features", "1", "--gallery-features", "2",
                       "--dashboard-features", "8"),
              "demo", compare_demo, resume_flag=None, started="demo/store"),
    ]
