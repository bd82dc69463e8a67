"""Text corpora and packing them into fixed-length token contexts.

`--dataset` accepts:
- ``python-docs`` (default): the docstrings of the running interpreter's standard library, read
  with `ast` (no module is imported), tests excluded, in a deterministic order;
- local ``.txt`` / ``.jsonl`` / ``.parquet`` files, or a folder of them (read through `datasets`);
- a Hugging Face hub dataset name (with `dataset_config`, `split`, `text_column`, `streaming`).

Packing (as in SAELens and the Anthropic papers): documents are tokenised without special
tokens and concatenated into one stream with EOS between documents; each context is BOS
followed by the next ``context_len - 1`` tokens of the stream. The final, partial context is
dropped so every stored context has the same length.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError

PYTHON_DOCS = "python-docs"
LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
MIN_DOCSTRING_CHARS = 200
"""Shorter docstrings ("Return self.") carry little text and are skipped."""


@dataclass(frozen=True)
class CorpusSpec(JsonConfig):
    """Which documents to read. Saved in the store manifest so a harvest can be resumed."""

    dataset: str = PYTHON_DOCS
    """'python-docs', a local file or folder (.txt/.jsonl/.parquet), or a hub dataset name."""
    dataset_config: str | None = None
    """Hub dataset configuration name (e.g. 'wikitext-2-raw-v1')."""
    split: str = "train"
    """Dataset split to read."""
    text_column: str = "text"
    """Column holding the document text (for .txt files `datasets` names it 'text')."""
    streaming: bool = False
    """Stream a hub dataset instead of downloading it whole."""

    config_name = "corpus spec"


def iter_documents(spec: CorpusSpec) -> Iterator[str]:
    """Yield the corpus' documents (non-empty strings) in a deterministic order.

    Local .txt files give one document per line (as `datasets`' text loader does), .jsonl one per
    line's `text_column`; both are read here, line by line, so a damaged line is named in the
    error. Parquet files and hub datasets go through `datasets`."""
    if spec.dataset == PYTHON_DOCS:
        yield from python_docstrings()
        return
    files = local_files(spec)
    if files and LOCAL_SUFFIXES[files[0].suffix] in ("text", "json"):
        yield from _read_lines(files, spec.text_column)
        return
    dataset = _load_dataset(spec, files)
    if spec.text_column not in (dataset.column_names or [spec.text_column]):
        raise SaeKitError(
            f"dataset {spec.dataset!r} has no column {spec.text_column!r}; "
            f"pass --text-column with one of: {', '.join(dataset.column_names)}"
        )
    for row in dataset:
        text = row[spec.text_column]
        if isinstance(text, str) and text.strip():
            yield text


def check_corpus(spec: CorpusSpec) -> None:
    """Fail now, with one line, if the corpus cannot give a single document (before any model loads).
    Local .txt/.jsonl files are read to the end, so a damaged line is found before the harvest
    starts; other corpora are checked on their first document."""
    documents = iter_documents(spec)
    try:
        next(documents)
        files = local_files(spec)
        if files and LOCAL_SUFFIXES[files[0].suffix] in ("text", "json"):
            for _ in documents:
                pass
    except StopIteration:
        raise SaeKitError(f"the corpus {spec.dataset!r} holds no text (every document is empty); "
                          "pass a file or dataset with text in it") from None
    finally:
        documents.close()


def looks_like_path(name: str) -> bool:
    """True for names that can only mean a local file: absolute or relative paths, a known suffix,
    or more than one '/' (hub ids are 'name' or 'owner/name')."""
    return (name.startswith(("/", "./", "../", "~")) or Path(name).suffix.lower() in LOCAL_SUFFIXES
            or name.count("/") > 1)


def local_files(spec: CorpusSpec) -> list[Path]:
    """The local files of a corpus given as a file or folder ([] for a hub dataset)."""
    path = Path(spec.dataset).expanduser()
    if not path.exists():
        if looks_like_path(spec.dataset):
            raise SaeKitError(f"the corpus file or folder {spec.dataset} does not exist")
        return []
    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise SaeKitError(f"{spec.dataset} holds no .txt, .jsonl or .parquet files")
    kinds = {LOCAL_SUFFIXES.get(f.suffix) for f in files}
    if None in kinds or len(kinds) > 1:
        raise SaeKitError(
            f"{spec.dataset}: local corpora must be all .txt, all .jsonl or all .parquet files, got "
            f"{', '.join(sorted({f.suffix or '(no suffix)' for f in files}))}"
        )
    return files


def _read_lines(files: list[Path], text_column: str) -> Iterator[str]:
    """Documents of local .txt (each line) or .jsonl (each line's `text_column`) files."""
    for file in files:
        as_json = LOCAL_SUFFIXES[file.suffix] == "json"
        try:
            handle = open(file, encoding="utf-8")
        except OSError as err:
            raise SaeKitError(f"cannot read the corpus file {file} ({err.strerror})") from err
        with handle:
            number = 0
            try:
                for number, line in enumerate(handle, 1):
                    text = _json_text(line, file, number, text_column) if as_json else line.rstrip("\n")
                    if isinstance(text, str) and text.strip():
                        yield text
            except UnicodeDecodeError:
                raise SaeKitError(f"{file} is not UTF-8 text (line {number + 1}); pass a text file") from None


def _json_text(line: str, file: Path, number: int, text_column: str):
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise SaeKitError(f"{file}, line {number}: not valid JSON ({err.msg}); every line of a .jsonl file "
                          "must be one JSON object") from None
    if not isinstance(row, dict):
        raise SaeKitError(f"{file}, line {number}: a JSON {type(row).__name__}, not an object with a "
                          f"{text_column!r} field")
    if text_column not in row:
        raise SaeKitError(f"dataset {str(file)!r} has no column {text_column!r} (line {number}); "
                          f"pass --text-column with one of: {', '.join(row)}")
    return row[text_column]


def python_docstrings(min_chars: int = MIN_DOCSTRING_CHARS) -> Iterator[str]:
    """Docstrings of modules, classes and functions of the stdlib, tests excluded.

    Files in sorted path order, nodes in `ast.walk` order: the same interpreter always gives
    the same sequence. About 2,400 documents and 1.3 M characters on CPython 3.11.
    """
    for _, _, tree in stdlib_modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    yield doc


def stdlib_modules() -> Iterator[tuple[tuple[str, ...], str, ast.Module]]:
    """(path parts relative to the stdlib, source, parsed tree) of every stdlib module, tests
    excluded, in sorted path order (the probing tasks of `sae_kit.evaluation.tasks` read them too)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in skip_dirs or part.startswith("test_") for part in parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings
        yield parts, source, tree


def _load_dataset(spec: CorpusSpec, files: list[Path]):
    """Local parquet files or a hub dataset through `datasets`, every failure as one line."""
    import datasets

    try:
        if files:
            return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
        return datasets.load_dataset(spec.dataset, spec.dataset_config, split=spec.split, streaming=spec.streaming)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ArrowInvalid, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if files:
            raise SaeKitError(f"could not read the parquet corpus {spec.dataset} ({first}); "
                              "the file is damaged or not parquet") from err
        raise SaeKitError(
            f"could not load dataset {spec.dataset!r} ({first}); pass 'python-docs', a local "
            ".txt/.jsonl/.parquet file or folder, or a hub dataset name where the hub is reachable"
        ) from err


def pack_contexts(
    documents: Iterable[str],
    tokenizer,
    context_len: int,
    *,
    prepend_bos: bool = True,
    tokenize_batch: int = 64,
) -> Iterator[list[int]]:
    """Tokenise `documents` and pack them into contexts of exactly `context_len` token ids.

    Each context: [BOS] + the next ``context_len - 1`` tokens of the stream
    ``doc_1 EOS doc_2 EOS ...`` (without BOS, ``context_len`` tokens of the stream).
    """
    bos, eos = special_token_ids(tokenizer)
    body = context_len - 1 if prepend_bos else context_len
    if body < 1:
        raise SaeKitError(f"context length {context_len} is too short; use at least 2")
    stream: list[int] = []
    for docs in _batched(documents, tokenize_batch):
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        start = 0
        while len(stream) - start >= body:
            chunk = stream[start : start + body]
            start += body
            yield [bos, *chunk] if prepend_bos else chunk
        del stream[:start]


def special_token_ids(tokenizer) -> tuple[int, int]:
    """(BOS id, EOS id), each falling back to the other (GPT-2 has only <|endoftext|>)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    bos = bos if bos is not None else eos
    eos = eos if eos is not None else bos
    if bos is None:
        raise SaeKitError("the tokenizer defines neither a BOS nor an EOS token; contexts cannot be packed")
    return int(bos), int(eos)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
