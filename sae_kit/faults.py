"""Fault injection for the fault-tolerance suite (tests/faults/, scripts/fault_injection.py).

`SAE_KIT_FAULTS` names faults to inject, comma-separated, each `POINT:N`:

- `enospc:N`   the N-th file write (1-based, counted per process: atomic writes and the files of
               a training checkpoint) fails with ENOSPC after writing half of its temporary file,
               as a full disk does;
- `nan-loss:N` the training loss of step N (1-based) is made NaN;
- `kill:N`     the process SIGKILLs itself at the N-th atomic write (between two files).

Unset (always, outside those tests) it costs one dictionary lookup per call. Real faults — a
tmpfs that fills up, SIGKILL from outside, a corrupted shard — are used wherever the machine
allows; injection covers the rest (see the README's "Guarantees").
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "SAE_KIT_FAULTS"
_counts: dict[str, int] = {}
_parsed: tuple[str, dict[str, int]] = ("", {})


def _plan() -> dict[str, int]:
    global _parsed
    text = os.environ.get(ENV, "")
    if text != _parsed[0]:
        plan = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            point, _, n = item.partition(":")
            plan[point] = int(n or 1)
        _parsed = (text, plan)
        _counts.clear()
    return _parsed[1]


def triggered(point: str, index: int | None = None) -> bool:
    """Whether the fault `point` fires now: at its N-th call, or when `index` (e.g. a 1-based
    step) equals N."""
    plan = _plan()
    if point not in plan:
        return False
    if index is not None:
        return index == plan[point]
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point] == plan[point]


def maybe_disk_full(path) -> None:
    """Raise OSError(ENOSPC) for `path` if the `enospc` fault fires now (a full disk)."""
    if triggered("enospc"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def maybe_kill() -> None:
    """SIGKILL this process if the `kill` fault fires now."""
    if triggered("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
