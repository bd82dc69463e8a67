"""The faults other than kills: a disk that fills up, a read-only output directory, a shard
corrupted while training reads it, a non-finite loss, a full disk while a checkpoint is written.

Each check runs the real command line in a child process against a real fault where the machine
allows it (a tmpfs mounted as root, filled up part-way; a tmpfs mounted read-only; bytes flipped
in the store's files while training runs) and an injected one otherwise (`sae_kit.faults`), then
checks the promise: one clear line, exit status 1, nothing written lost, and the run continued
afterwards reaches the uninterrupted result. Used by tests/faults/test_faults.py and
scripts/fault_injection.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import REPO, Comparison, Finished, Reference, Stage, cli_command, cli_env, run_cli


@dataclass
class CheckResult:
    """One fault: how it was made, whether the promise held, and what was seen."""

    name: str
    method: str
    passed: bool
    detail: str


def one_clear_line(finished: Finished, pattern: str) -> tuple[bool, str]:
    """Exit status 1, no traceback, exactly one error line, matching `pattern`."""
    errors = [line for line in finished.stderr.splitlines() if "error:" in line]
    line = errors[-1] if errors else finished.error_line()
    ok = (finished.code == 1 and "Traceback" not in finished.stderr and len(errors) == 1
          and re.search(pattern, line, re.IGNORECASE) is not None)
    return ok, line.strip()


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int, read_only: bool = False):
    """Mount a tmpfs of `size_mb` at `path` (root only); yields True if mounted, else False."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mb}m" + (",ro" if read_only else "")
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                   capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _shards_written(store: Path) -> int:
    try:
        return len(json.loads((store / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _fill(directory: Path) -> Path:
    """Write zeros into directory/filler until the disk is full."""
    filler = directory / "filler"
    block = bytes(1 << 20)
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(block)
    return filler


def disk_full_harvest(harvest: Stage, ref: Reference, root: Path) -> CheckResult:
    """A harvest whose disk fills up part-way: one line naming the full disk, the complete shards
    intact, and `--resume` (after space is freed) gives the uninterrupted store."""
    from sae_kit.harvest import ActivationStore

    work = root / "disk-full"
    shutil.rmtree(work, ignore_errors=True)
    with tmpfs(work, 80) as mounted:
        store = work / harvest.output
        if mounted:  # a real full disk: fill it once the harvest has written two shards
            method = "tmpfs of 80 MiB filled up after 2 shards"
            with open(root / "disk-full.log", "w") as err:
                proc = subprocess.Popen(cli_command(harvest.command(work, again=False)), stdout=subprocess.DEVNULL,
                                        stderr=err, env=cli_env(), cwd=REPO)
                while proc.poll() is None and _shards_written(store) < 2:
                    time.sleep(0.01)
                filler = _fill(work)
                proc.wait()
            finished = Finished(proc.returncode, (root / "disk-full.log").read_text(), 0)
        else:
            method = "ENOSPC injected at the 4th file write (no tmpfs here)"
            filler = None
            finished = run_cli(harvest.command(work, again=False), root / "disk-full.log", faults="enospc:4")
        ok, line = one_clear_line(finished, r"disk|space")
        kept = _shards_written(store)
        intact = kept > 0 and not ActivationStore(store).verify()
        if filler is not None:
            filler.unlink()
        resumed = run_cli(harvest.command(work, again=True), root / "disk-full-resume.log")
        same = resumed.code == 0 and harvest.compare(ref.work / harvest.output, store).identical
    passed = ok and intact and same
    return CheckResult("disk full during a harvest", method, passed,
                       f"{line!r}; {kept} complete shards {'intact' if intact else 'DAMAGED'}; "
                       f"resume {'gives the uninterrupted store' if same else 'DIFFERS'}")


def read_only_outputs(world: dict[str, str], root: Path) -> CheckResult:
    """Every writing command pointed at a read-only directory: one line each, nothing else."""
    work = root / "read-only"
    shutil.rmtree(work, ignore_errors=True)
    with tmpfs(work, 200, read_only=True) as mounted:  # large enough that the free-space check passes
        if not mounted:
            work.mkdir(parents=True, exist_ok=True)
            work.chmod(0o555)
        commands = {
            "harvest": ["harvest", "--model", world["lm"], "--hook", "resid.1", "--tokens", "2048", "--context-len",
                        "32", "--out", str(work / "store")],
            "train": ["train", "--store", world["store"], "--hook", "resid.1", "--tokens", "4096", "--out",
                      str(work / "run")],
            "analyze": ["analyze", "--run", world["run"], "--store", world["store"], "--out", str(work / "analysis")],
            "dashboard": ["dashboard", "--analysis", world["analysis"], "--out", str(work / "site")],
        }
        lines, passed = [], True
        for name, argv in commands.items():
            ok, line = one_clear_line(run_cli(argv, root / f"read-only-{name}.log"), r"read-only|permission")
            passed &= ok
            lines.append(f"{name}: {line.split('error: ', 1)[-1]!r}" if ok else f"{name} FAILED: {line!r}")
        if not mounted:
            work.chmod(0o755)
    method = "tmpfs mounted read-only" if mounted else "directory chmod 555 (not root)"
    return CheckResult("read-only output directory", method, passed, "; ".join(lines[:1]) + f" (and {len(lines) - 1} more)")


def corrupted_shard_in_training(store: Path, root: Path) -> CheckResult:
    """Bytes flipped in every shard of `store` (a store of many shards) while training reads it:
    one line naming a shard, the last checkpoint valid, and the run resumed on the repaired store
    reaches the weights of an uninterrupted run."""
    from sae_kit.harvest import ActivationStore
    from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint
    from tests.faults.harness import compare_runs

    work = root / "corrupt"
    shutil.rmtree(work, ignore_errors=True)
    copy = work / "store"
    shutil.copytree(store, copy)
    tokens = 2 * ActivationStore(store).n_tokens  # two passes: every shard group is loaded after the first checkpoint

    def argv(data: Path, out: Path) -> list[str]:
        return ["train", "--store", str(data), "--hook", "resid.1", "--arch", "sae", "--expansion", "16", "--batch-size",
                "256", "--tokens", str(tokens), "--checkpoint-every-tokens", "256", "--log-every", "4",
                # the input scale from the first shards only: the others are first read (and their
                # checksums checked) while training runs
                "--norm-estimation-tokens", "2048", "--out", str(out)]

    reference = run_cli(argv(store, work / "reference"), root / "corrupt-reference.log")
    with open(root / "corrupt.log", "w") as err:
        proc = subprocess.Popen(cli_command(argv(copy, work / "run")), stdout=subprocess.DEVNULL, stderr=err,
                                env=cli_env(), cwd=REPO)
        while proc.poll() is None and find_checkpoint(work / "run") is None:
            time.sleep(0.005)
        for shard in copy.glob("shard-*.safetensors"):  # same size, one byte flipped: only the checksum tells
            data = bytearray(shard.read_bytes())
            data[-3] ^= 0xFF
            shard.write_bytes(bytes(data))
        proc.wait()
    finished = Finished(proc.returncode, (root / "corrupt.log").read_text(), 0)
    ok, line = one_clear_line(finished, r"shard-\d+\.safetensors fails its sha256 checksum")
    checkpoint = find_checkpoint(work / "run")
    try:
        state, _ = load_checkpoint(checkpoint)
        valid = f"checkpoint at step {state['step']} loads"
    except Exception as err:  # noqa: BLE001 - any failure to load is what this check reports
        state, valid = None, f"checkpoint damaged: {err}"
    shutil.rmtree(copy)
    shutil.copytree(store, copy)
    resumed = run_cli(argv(copy, work / "run") + ["--resume"], root / "corrupt-resume.log")
    same = reference.code == 0 and resumed.code == 0 and compare_runs(work / "reference", work / "run").identical
    return CheckResult("shard corrupted while training reads it", "one byte flipped in every shard after the first "
                       "checkpoint", ok and state is not None and same,
                       f"{line.split('error: ', 1)[-1]!r}; {valid}; resumed on the repaired store: "
                       f"{'the uninterrupted weights' if same else 'DIFFERENT'}")


def injected_training_fault(train: Stage, ref: Reference, root: Path, fault: str, pattern: str,
                            name: str) -> CheckResult:
    """A training run with `fault` injected (nan-loss:N, enospc:N): one line, the last good
    checkpoint kept, and resuming without the fault reaches the uninterrupted weights."""
    from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint

    work = root / fault.replace(":", "-")
    shutil.rmtree(work, ignore_errors=True)
    finished = run_cli(train.command(work, again=False), root / f"{fault.replace(':', '-')}.log", faults=fault)
    ok, line = one_clear_line(finished, pattern)
    checkpoint = find_checkpoint(work / train.output)
    step = load_checkpoint(checkpoint)[0]["step"] if checkpoint else None
    resumed = run_cli(train.command(work, again=True), root / f"{fault.replace(':', '-')}-resume.log")
    comparison = (train.compare(ref.work / train.output, work / train.output) if resumed.code == 0
                  else Comparison(False, detail=resumed.error_line()))
    return CheckResult(name, f"SAE_KIT_FAULTS={fault}", ok and step is not None and comparison.identical,
                       f"{line.split('error: ', 1)[-1]!r}; last good checkpoint: step {step}; resumed: "
                       f"{'the uninterrupted weights' if comparison.identical else comparison.detail}")


def all_checks(stages: dict[str, Stage], refs: dict[str, Reference], world: dict[str, str],
               root: Path) -> list[CheckResult]:
    """Every fault check, on the kill stages' references (harvest and store training)."""
    harvest, train = stages["harvest"], stages["train (store)"]
    return [
        disk_full_harvest(harvest, refs["harvest"], root),
        injected_training_fault(train, refs["train (store)"], root, "enospc:7",
                                r"disk|space", "disk full while a checkpoint is written"),
        read_only_outputs(world, root),
        corrupted_shard_in_training(refs["harvest"].work / harvest.output, root),
        injected_training_fault(train, refs["train (store)"], root, "nan-loss:40",
                                r"step 40: the loss of .* is not finite; the last good checkpoint", "non-finite loss at step 40"),
    ]
