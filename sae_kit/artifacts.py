"""Helpers shared by every stage directory: reading its tagged JSON and guarding its output dir.

Each stage writes a directory with a JSON file naming its format (`manifest.json` of a store,
`analysis.json` of an analysis, `site.json` of a dashboard); these helpers give all of them the
same checks and the same one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sae_kit.errors import SaeKitError


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
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{file} is not valid JSON ({err}); {what} there is damaged") from err
    if payload.get("format") != fmt:
        raise SaeKitError(f"{file} is not the JSON of {what} (format {payload.get('format')!r}, expected {fmt!r})")
    return payload


def prepare_output_dir(out: str | Path, marker_file: str, what: str, overwrite: bool,
                       clear: tuple[str, ...] = ()) -> Path:
    """Check `out` may receive `what`: absent, empty, or (with `overwrite`) holding one already,
    recognised by `marker_file`. Sub-directories in `clear` are removed before overwriting."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SaeKitError(f"--out {out} is a file; name a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker_file).is_file():
            raise SaeKitError(f"{out} is not empty and holds no {what}; choose another --out")
        if not overwrite:
            raise SaeKitError(f"{out} already holds {what}; pass --overwrite to replace it")
        for name in clear:
            shutil.rmtree(out / name, ignore_errors=True)
    return out
