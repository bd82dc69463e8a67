"""The fault-injection suite, full form: one table of what survives what.

    .venv/bin/python scripts/fault_injection.py                      # 20 kills, every fault, the battery
    .venv/bin/python scripts/fault_injection.py --kills 40 --seed 1  # more kills, other moments
    .venv/bin/python scripts/fault_injection.py --quick              # 1 kill per stage (what CI runs, plus the demo)

- kill -9 at random moments of harvest, training from a store, training on the fly, analysis and
  the demo (tiny Llama, real command lines in child processes), each followed by the command's
  own continuation (--resume, or the same command again); per stage: kills delivered, tokens
  lost and duplicated, and whether every result is identical to an uninterrupted run (stores row
  by row, weights bitwise, analyses file by file);
- a disk filling up during a harvest (a tmpfs as root, else injected ENOSPC), a full disk while a
  checkpoint is written, read-only output directories, a shard corrupted while training reads it,
  a non-finite loss (tests/faults/checks.py);
- the bad-input battery (tests/faults/battery.py): tried, clear one-line errors, tracebacks, data changed.

The kill harness is tests/faults/harness.py; the quick form runs in CI (tests/faults/test_faults.py).
Writes the table to --out as well (default runs/faults/faults.md).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults import checks  # noqa: E402
from tests.faults.battery import CASES, build_inputs, build_world, run_case  # noqa: E402
from tests.faults.harness import kill_chain, reference, stages_for  # noqa: E402


def kill_rows(stages, refs, work: Path, kills: int, rng: random.Random) -> list[list[str]]:
    """Per stage: chains of one or two kills until `kills` kills have been delivered."""
    rows = []
    for stage in stages:
        delivered, survived, identical, chains, killed, lost, duplicated, failures = 0, 0, 0, 0, 0, 0, 0, []
        started = time.perf_counter()
        while delivered < kills and chains < 3 * kills:
            per_chain = 1 if chains % 2 == 0 or kills - delivered < 2 else 2  # every other chain kills the resume too
            result = kill_chain(stage, refs[stage.name], work / "kills" / slug(stage.name) / f"chain-{chains}", rng,
                                kills=per_chain)
            chains += 1
            if not result.kills:  # the process ended before its kill: nothing to count
                continue
            killed += 1
            delivered += result.kills
            failures += result.failed
            if result.comparison is not None:
                lost += result.comparison.tokens_lost
                duplicated += result.comparison.tokens_duplicated
                if result.comparison.identical:
                    identical += 1
                    survived += result.kills
                else:
                    failures.append(result.comparison.detail)
        rows.append([f"kill -9 during {stage.name}", f"{delivered} kills in {killed} killed runs, each resumed",
                     str(delivered), str(survived), f"{lost:,}", f"{duplicated:,}",
                     (f"{identical}/{killed} resumed results identical" if not failures else f"FAILED: {failures[0]}")
                     + f" ({time.perf_counter() - started:.0f} s)"])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def battery_row(inputs: dict, work: Path) -> list[str]:
    world = build_world(work / "battery", inputs["store"], inputs["run"], inputs["analysis"], inputs["lm"],
                        inputs["narrow_store"])
    clear = tracebacks = changed = 0
    unclear = []
    for i, case in enumerate(CASES):
        outcome = run_case(case, world, work / "battery-scratch" / str(i))
        errors = outcome.error_lines()
        good = (not outcome.traceback and len(errors) == 1 and re.search(case.message, errors[0]) is not None
                and outcome.code == case.code and not outcome.changed)
        clear += good
        tracebacks += outcome.traceback
        changed += outcome.changed
        if not good:
            unclear.append(case.name)
    return ["bad-input battery (every command)", f"{len(CASES)} cases in-process", str(len(CASES)), str(clear), "-", "-",
            f"{tracebacks} tracebacks, {changed} data changed" + (f"; unclear: {', '.join(unclear[:3])}" if unclear else "")]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/faults", help="working directory (replaced)")
    parser.add_argument("--kills", type=int, default=20, help="kills delivered in all (spread over the five stages)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--quick", action="store_true", help="one kill per stage")
    parser.add_argument("--out", help="also write the table here (default WORK/faults.md)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    inputs = build_inputs(work / "inputs")
    world = {k: str(inputs[k]) for k in ("lm", "store", "run")} | {"analysis": str(inputs["analysis"].path)}
    stages = stages_for(world)
    refs = {s.name: reference(s, work / "references" / slug(s.name)) for s in stages}
    per_stage = 1 if args.quick else math.ceil(args.kills / len(stages))
    rows = kill_rows(stages, refs, work, per_stage, random.Random(args.seed))
    by_name = {s.name: s for s in stages}
    for result in checks.all_checks(by_name, refs, world, work / "checks"):
        rows.append([result.name, result.method, "1", str(int(result.passed)), "-", "-", result.detail])
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    rows.append(battery_row(inputs, work))
    header = ["fault", "how", "tried", "survived / clear", "tokens lost", "tokens duplicated", "result"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows])
    text = (f"{table}\n\nMeasured by `python scripts/fault_injection.py --kills {args.kills} --seed {args.seed}"
            f"{' --quick' if args.quick else ''}` in {(time.perf_counter() - started) / 60:.1f} min.\n")
    print(text)
    out = Path(args.out) if args.out else work / "faults.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    failed = [row for row in rows if row[2] != row[3] or "FAILED" in row[-1] or "DIFFER" in row[-1]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
