"""Corpora: the embedded stdlib docstrings, local files, and packing into contexts."""

import json

import pytest

from sae_kit.errors import SaeKitError
from sae_kit.lm.corpus import CorpusSpec, iter_documents, pack_contexts, python_docstrings


def test_python_docs_is_deterministic_and_sizeable():
    first = list(python_docstrings())
    second = list(python_docstrings())
    assert first == second
    assert len(first) > 1000
    assert sum(map(len, first)) > 500_000
    assert all(len(doc) >= 200 for doc in first)


def test_packing_layout(tiny_tokenizer):
    docs = ["alpha beta gamma " * 5, "delta epsilon", "zeta eta theta " * 9]
    contexts = list(pack_contexts(docs, tiny_tokenizer, context_len=16))
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert all(len(c) == 16 and c[0] == bos for c in contexts)
    stream = [t for ids in tiny_tokenizer(docs, add_special_tokens=False)["input_ids"] for t in (*ids, eos)]
    body = [t for c in contexts for t in c[1:]]
    assert body == stream[: len(body)]  # EOS between documents, nothing lost or repeated
    assert len(stream) - len(body) < 15  # only the final partial context is dropped


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files(tmp_path, kind):
    texts = ["first document here", "second one", "third"]
    folder = tmp_path / "corpus"
    folder.mkdir()
    if kind == "txt":
        (folder / "a.txt").write_text("\n".join(texts) + "\n")
    elif kind == "jsonl":
        (folder / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": texts}), folder / "a.parquet")
    column = "text" if kind == "txt" else "body"
    assert list(iter_documents(CorpusSpec(str(folder), text_column=column))) == texts


def test_wrong_column_and_missing_dataset(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(SaeKitError, match="no column 'text'.*body"):
        list(iter_documents(CorpusSpec(str(tmp_path / "a.jsonl"))))
    with pytest.raises(SaeKitError, match="could not load dataset"):
        list(iter_documents(CorpusSpec("no-such-user/no-such-dataset-xyz")))
