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
    """Yield the corpus' documents (non-empty strings) in a deterministic order."""
    if spec.dataset == PYTHON_DOCS:
        yield from python_docstrings()
        return
    dataset = _load_dataset(spec)
    if spec.text_column not in (dataset.column_names or [spec.text_column]):
        raise SaeKitError(
            f"dataset {spec.dataset!r} has no column {spec.text_column!r}; "
            f"pass --text-column with one of: {', '.join(dataset.column_names)}"
        )
    for row in dataset:
        text = row[spec.text_column]
        if isinstance(text, str) and text.strip():
            yield text


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


def _load_dataset(spec: CorpusSpec):
    import datasets

    path = Path(spec.dataset).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise SaeKitError(f"{spec.dataset} holds no .txt, .jsonl or .parquet files")
        kinds = {LOCAL_SUFFIXES.get(f.suffix) for f in files}
        if None in kinds or len(kinds) > 1:
            raise SaeKitError(
                f"{spec.dataset}: local corpora must be all .txt, all .jsonl or all .parquet files, got "
                f"{', '.join(sorted({f.suffix for f in files}))}"
            )
        return datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")
    try:
        return datasets.load_dataset(
            spec.dataset, spec.dataset_config, split=spec.split, streaming=spec.streaming
        )
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
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
