"""Binary probing tasks: texts with labels, offline from the default corpus or from the hub.

A dataset gives texts per class; each class becomes a one-vs-rest binary task the way SAEBench's
sparse probing builds them (`prepare_probe_data`): the class' texts are the positives, and as
many negatives are drawn evenly from the dataset's other classes; a two-class dataset gives one
task. Train and test texts never overlap. All tasks share one list of texts, so each text goes
through the language model once however many tasks use it.

- ``python-docs`` (offline, from the installed interpreter's standard library, as the default
  corpus): **package** — which of the N largest stdlib packages (by docstrings of ≥ 200
  characters: tkinter, idlelib, email, distutils … on CPython 3.11) a docstring comes from;
  **prose-vs-code** — a docstring paragraph against the source of a function body.
  The SAEs' own training corpus is these docstrings, so the package task probes texts the SAE
  may have seen; the code snippets are not in that corpus.
- Hub datasets (SAEBench's, loaded with `datasets` where the hub is reachable):
  ``LabHC/bias_in_bios_class_set1|2|3`` (profession), ``fancyzhx/ag_news`` (topic),
  ``Helsinki-NLP/europarl`` (language id), ``codeparrot/github-code`` (programming language),
  with SAEBench's chosen classes. SAEBench also balances bias_in_bios by gender; here it is not.
"""

from __future__ import annotations

import ast
import functools
import math
import random
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field

from sae_kit.errors import SaeKitError
from sae_kit.lm.corpus import MIN_DOCSTRING_CHARS, stdlib_modules

PYTHON_DOCS = "python-docs"
PACKAGE_CLASSES = 5
"""One-vs-rest tasks over this many of the largest stdlib packages (SAEBench's datasets have ≤ 5 classes)."""
SNIPPET_CHARS = (200, 800)
"""Code snippets and prose paragraphs: at least 200 characters, cut at a line end after 800."""

HUB_DATASETS: dict[str, dict] = {
    **{f"LabHC/bias_in_bios_class_set{i}": dict(path="LabHC/bias_in_bios", text="hard_text", label="profession",
                                                classes=classes, splits=("train", "test"))
       for i, classes in ((1, ("0", "1", "2", "6", "9")), (2, ("11", "13", "14", "18", "19")),
                          (3, ("20", "21", "22", "25", "26")))},
    "fancyzhx/ag_news": dict(path="fancyzhx/ag_news", text="text", label="label", classes=("0", "1", "2", "3"),
                             splits=("train", "test")),
    "Helsinki-NLP/europarl": dict(path="Helsinki-NLP/europarl", classes=("en", "fr", "de", "es", "nl"),
                                  pairs={"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}),
    "codeparrot/github-code": dict(path="codeparrot/github-code", text="code", label="language",
                                   classes=("C", "Python", "HTML", "Java", "PHP"), skip_chars=150, min_chars=534),
}
"""SAEBench's sparse-probing datasets (`sae_bench_utils/dataset_info.py`), class for class."""


@dataclass(frozen=True)
class ProbeTask:
    """One binary task: indices into `ProbeTasks.texts` and their labels (1 = positive class)."""

    name: str
    """e.g. 'python-docs/package=email'."""
    dataset: str
    """The dataset it belongs to (results are averaged per dataset, then over datasets, as SAEBench)."""
    train: tuple[int, ...]
    train_labels: tuple[int, ...]
    test: tuple[int, ...]
    test_labels: tuple[int, ...]


@dataclass
class ProbeTasks:
    """The tasks and the texts they index (each text once)."""

    texts: list[str] = field(default_factory=list)
    tasks: list[ProbeTask] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def add_text(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.texts)
            self.texts.append(text)
        return self._index[text]

    def add_dataset(self, dataset: str, train: dict[str, list[str]], test: dict[str, list[str]], seed: int) -> None:
        """One-vs-rest tasks of a dataset given {class: texts} per split (two classes: one task)."""
        classes = sorted(c for c in train if train[c] and test.get(c))
        if len(classes) < 2:
            raise SaeKitError(f"probing dataset {dataset} has fewer than two classes with texts")
        rng = random.Random(seed)
        for positive in classes[:1] if len(classes) == 2 else classes:
            rows = {split: _one_vs_rest(by_class, positive, classes, rng) for split, by_class in
                    (("train", train), ("test", test))}
            self.tasks.append(ProbeTask(
                name=f"{dataset}={positive}", dataset=dataset,
                train=tuple(self.add_text(t) for t, _ in rows["train"]), train_labels=tuple(y for _, y in rows["train"]),
                test=tuple(self.add_text(t) for t, _ in rows["test"]), test_labels=tuple(y for _, y in rows["test"])))


def _one_vs_rest(by_class: dict[str, list[str]], positive: str, classes: list[str], rng: random.Random):
    """[(text, label)]: every text of `positive`, and as many negatives drawn evenly from the other
    classes (⌈n_pos / n_other⌉ each, then cut to n_pos), shuffled (SAEBench's `prepare_probe_data`)."""
    pos = by_class[positive]
    others = [c for c in classes if c != positive]
    per_class = math.ceil(len(pos) / len(others))
    neg = [t for c in others for t in rng.sample(by_class[c], min(per_class, len(by_class[c])))]
    rows = [(t, 1) for t in pos] + [(t, 0) for t in rng.sample(neg, min(len(pos), len(neg)))]
    rng.shuffle(rows)
    return rows


def build_tasks(datasets: tuple[str, ...], train_size: int, test_size: int, seed: int = 0) -> ProbeTasks:
    """The tasks of every named dataset; train_size / test_size texts per task (half positive)."""
    tasks = ProbeTasks()
    for name in datasets:
        if name == PYTHON_DOCS:
            for dataset, by_class in python_docs_classes().items():
                tasks.add_dataset(dataset, *split_classes(by_class, train_size // 2, test_size // 2, seed), seed)
        elif name in HUB_DATASETS:
            tasks.add_dataset(name, *load_hub_dataset(name, train_size // 2, test_size // 2, seed), seed)
        else:
            raise SaeKitError(f"unknown probing dataset {name!r}; use {PYTHON_DOCS} or one of: "
                              + ", ".join(HUB_DATASETS))
    return tasks


def split_classes(by_class: dict[str, list[str]], n_train: int, n_test: int, seed: int):
    """Shuffle each class (seeded) and split it: up to n_train train texts (at most 70 % of the
    class) and up to n_test test texts from the rest. Returns (train, test) {class: texts}."""
    train, test = {}, {}
    for name, texts in sorted(by_class.items()):
        texts = random.Random(f"{seed}:{name}").sample(texts, len(texts))
        k = min(n_train, max(1, round(0.7 * len(texts))))
        train[name], test[name] = texts[:k], texts[k : k + n_test]
    return train, test


# ----------------------------------------------------------------------------- offline: the stdlib


@functools.lru_cache(maxsize=2)
def python_docs_classes(n_packages: int = PACKAGE_CLASSES) -> dict[str, dict[str, list[str]]]:
    """{dataset: {class: texts}} for the two offline datasets, from one walk over the stdlib
    (cached: a few seconds of parsing; callers must not modify the lists)."""
    by_package: dict[str, list[str]] = defaultdict(list)
    code, prose = [], []
    for parts, source, tree in stdlib_modules():
        package = parts[0].removesuffix(".py")
        lines = source.splitlines()
        for node in _definitions(tree):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                by_package[package].append(doc)
                prose.extend(p for p in _prose_paragraphs(doc))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                snippet = _code_snippet(node, lines)
                if snippet:
                    code.append(snippet)
    largest = sorted(by_package, key=lambda p: (-len(by_package[p]), p))[:n_packages]
    return {f"{PYTHON_DOCS}/package": {p: by_package[p] for p in largest},
            f"{PYTHON_DOCS}/prose-vs-code": {"prose": prose, "code": code}}


DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _definitions(tree: ast.Module):
    """The module, class and function nodes of a tree, in source order, visiting statements only
    (definitions never sit inside expressions; skipping those is what makes the walk cheap)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, DEFINITIONS):
            yield node
        stack.extend(reversed([c for c in ast.iter_child_nodes(node)
                               if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case))]))


def _prose_paragraphs(doc: str) -> list[str]:
    """Paragraphs of a docstring that read as prose: long enough, no doctest, no indented block."""
    out = []
    for paragraph in doc.split("\n\n"):
        lines = paragraph.strip("\n").splitlines()
        if any(line.lstrip().startswith((">>>", "...")) or line.startswith((" ", "\t")) for line in lines):
            continue
        text = "\n".join(lines)
        if len(text) >= SNIPPET_CHARS[0]:
            out.append(_cut(text))
    return out


def _code_snippet(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    """A function's source without its docstring and comment lines, dedented, cut after 800 characters."""
    skip = set()
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip = set(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    kept = [lines[i - 1] for i in range(first, (node.end_lineno or node.lineno) + 1)
            if i not in skip and lines[i - 1].strip() and not lines[i - 1].lstrip().startswith("#")]
    text = textwrap.dedent("\n".join(kept))
    return _cut(text) if len(text) >= SNIPPET_CHARS[0] else None


def _cut(text: str) -> str:
    """The text up to the first line end after 800 characters."""
    if len(text) <= SNIPPET_CHARS[1]:
        return text
    end = text.find("\n", SNIPPET_CHARS[1])
    return text if end < 0 else text[:end]


# ----------------------------------------------------------------------------- hub datasets


def load_hub_dataset(name: str, n_train: int, n_test: int, seed: int):
    """(train, test) {class: texts} of one of SAEBench's datasets, n_train / n_test per class.
    Raises SaeKitError naming the dataset when the hub (or the dataset) cannot be reached."""
    spec = HUB_DATASETS[name]
    try:
        import datasets
    except ImportError as err:  # a core dependency, but say so plainly
        raise SaeKitError("probing on hub datasets needs the `datasets` package") from err
    try:
        if "pairs" in spec:  # Europarl: one language pair per configuration, the text in that language
            by_class = {lang: _take((row["translation"][lang] for row in datasets.load_dataset(
                spec["path"], pair, split="train", streaming=True)), n_train + n_test)
                for lang, pair in spec["pairs"].items()}
            return split_classes(by_class, n_train, n_test, seed)
        if "splits" in spec:
            train, test = (_bucket(datasets.load_dataset(spec["path"], split=split, streaming=True), spec, n)
                           for split, n in zip(spec["splits"], (n_train, n_test)))
            return train, test
        rows = datasets.load_dataset(spec["path"], split="train", streaming=True, languages=list(spec["classes"]))
        return split_classes(_bucket(rows, spec, n_train + n_test), n_train, n_test, seed)
    except SaeKitError:
        raise
    except Exception as err:  # datasets raises many types when offline (ConnectionError, OSError, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SaeKitError(f"could not load probing dataset {name!r} from the hub ({first}); it needs network "
                          f"access to huggingface.co — use --probe-dataset {PYTHON_DOCS} offline") from err


def _take(texts, n: int) -> list[str]:
    out = []
    for text in texts:
        if isinstance(text, str) and text.strip():
            out.append(text)
            if len(out) >= n:
                break
    return out


def _bucket(rows, spec: dict, n: int) -> dict[str, list[str]]:
    """{class: texts} of the spec's classes, reading rows until each class has n (or rows run out).
    github-code: the first `skip_chars` characters (licence headers) are dropped, as SAEBench does."""
    wanted = set(spec["classes"])
    out: dict[str, list[str]] = {c: [] for c in spec["classes"]}
    for row in rows:
        label = str(row[spec["label"]])
        text = row[spec["text"]]
        if label not in wanted or len(out[label]) >= n or not isinstance(text, str):
            continue
        if len(text) < spec.get("min_chars", 1):
            continue
        out[label].append(text[spec.get("skip_chars", 0):])
        if all(len(v) >= n for v in out.values()):
            break
    return out
