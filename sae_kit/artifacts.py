"""What every stage directory shares: atomic writes, its tagged JSON, its output-dir guard, plotly.js.

Each stage writes a directory with a JSON file naming its format (`manifest.json` of a store,
`config.json` of a run, `analysis.json` of an analysis, `site.json` of a dashboard). Every file
of those directories is written here, to a temporary name first and then renamed, so a reader
(or a process killed mid-write) never sees half a file; figures load plotly.js from a copy that
`write_plotly_js` puts beside them, never from a CDN.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from sae_kit import faults
from sae_kit.errors import SaeKitError

PLOTLY_FILE = "plotly.min.js"


# ----------------------------------------------------------------------------- atomic writes


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write `data` to `path` via a temporary file (fsynced unless told not to) and a rename."""
    path = Path(path)
    tmp = _temporary(path)
    faults.maybe_kill()
    try:
        with open(tmp, "wb") as handle:
            if faults.triggered("enospc"):  # injected: half the file, then the disk is full
                handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves the old file, not a stray temporary
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write UTF-8 `text` atomically (pages and reports: no fsync unless asked)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | Path, payload, *, fsync: bool = True) -> Path:
    """Write `payload` as indented JSON atomically (manifests and configs: fsynced)."""
    return atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
                              fsync=fsync)


def atomic_save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically: {name: tensor} (made contiguous) + string metadata."""
    from safetensors.torch import save

    data = save({name: t.contiguous() for name, t in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def write_plotly_js(directory: str | Path) -> Path:
    """plotly.min.js from the installed plotly package, written into `directory` once; returns its path."""
    from plotly.offline import get_plotlyjs

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PLOTLY_FILE
    script = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(script.encode("utf-8")):
        atomic_write_text(path, script)
    return path


# ----------------------------------------------------------------------------- stage directories


def read_tagged_json(directory: str | Path, file_name: str, fmt: str, what: str, create_with: str) -> dict:
    """Load DIRECTORY/FILE_NAME and check its "format" is `fmt`.

    `what` names the artifact in errors ("an activation store"); `create_with` says how to make one.
    """
    directory = Path(directory)
    file = directory / file_name
    if not file.is_file():
        raise SaeKitError(f"{directory} is not {what} (no {file_name}); create one with {create_with}")
    try:
        payload = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeKitError(f"{file} is not valid JSON ({err}); {what} there is damaged") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise SaeKitError(f"{file} is not the JSON of {what} (format {found!r}, expected {fmt!r})")
    return payload


INCOMPLETE_FILE = ".incomplete"
"""Present in an output directory while a stage writes it (holds what is being written): a run
killed part-way leaves it, and the same command run again recognises its own unfinished output
and replaces it, with no --overwrite needed (`prepare_output_dir`, `finish_output_dir`)."""


def prepare_output_dir(out: str | Path, marker_file: str, what: str, overwrite: bool,
                       clear: tuple[str, ...] = ()) -> Path:
    """Check `out` may receive `what` and mark it as being written: absent, empty, left unfinished
    by an interrupted run of the same stage, or (with `overwrite`) holding one already, recognised
    by `marker_file`. Sub-directories in `clear` are removed before writing again."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SaeKitError(f"--out {out} is a file; name a directory")
    if out.is_dir() and any(out.iterdir()):
        unfinished = _unfinished(out) == what
        if not unfinished and not (out / marker_file).is_file():
            raise SaeKitError(f"{out} is not empty and does not hold {what}; choose another --out (nothing was changed)")
        if not unfinished and not overwrite:
            raise SaeKitError(f"{out} already holds {what}; pass --overwrite to replace it")
        for name in clear:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # a plain write, not an atomic one: the marker's presence is what counts, and it must not
    # shift the atomic-write counts the fault-injection suite aims at
    (out / INCOMPLETE_FILE).write_text(what, encoding="utf-8")
    return out


def finish_output_dir(out: str | Path) -> None:
    """Mark `out` complete (after its marker file is written): drop the unfinished-run marker."""
    (Path(out) / INCOMPLETE_FILE).unlink(missing_ok=True)


def _unfinished(out: Path) -> str | None:
    """What an interrupted run left unfinished in `out`, or None."""
    try:
        return (out / INCOMPLETE_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
