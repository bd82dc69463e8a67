"""The bad-input battery: every command, as a hostile user would call it.

Each case names the command line (placeholders such as {store} are filled from real files built
by `build_world`), what the one-line error must say (a regular expression), the exit status
(2 for usage errors argparse refuses, 1 for everything else), and the artifact it must leave
untouched. `run_case` runs one in-process through `sae_kit.cli.main` and reports what happened;
tests/faults/test_bad_inputs.py asserts on every case and scripts/fault_injection.py counts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One bad input."""

    name: str
    """What is wrong, in a few words."""
    argv: tuple[str, ...]
    """The command line after `sae-kit`, with {placeholders} (see `build_world`)."""
    message: str
    """A regular expression the one-line error must match."""
    code: int = 1
    """Expected exit status: 2 usage error (argparse), 1 any other failure."""
    protect: str | None = None
    """A placeholder naming a file or directory that must not change."""


def C(name, argv, message, code=1, protect=None) -> Case:
    return Case(name, tuple(argv.split()) if isinstance(argv, str) else tuple(argv), message, code, protect)


LM = "--model {lm} --hook resid.1"
CASES: tuple[Case, ...] = (
    # ------------------------------------------------------------------ hooks / model loading
    C("model path that does not exist", "hooks --model /no/such/model/dir", r"model path /no/such/model/dir does not exist"),
    C("model file that is not a model", "hooks --model {text_file}", r"is a file but not a \.gguf file"),
    C("model directory without config.json", "hooks --model {empty_dir}", r"has no config\.json"),
    C("a .gguf file that is not GGUF", "hooks --model {fake_gguf}", r"could not load the (tokenizer|model) .*damaged"),
    C("truncated model weights", "hooks --model {truncated_model}", r"could not load the model .*damaged or incomplete"),
    C("unknown model dtype", "hooks --model-dtype float8", r"invalid choice: 'float8'", 2),
    # ------------------------------------------------------------------ harvest
    C("no --out", f"harvest {LM}", r"the following arguments are required: --out", 2),
    C("zero tokens", f"harvest {LM} --tokens 0 --out {{new}}", r"--tokens must be positive"),
    C("negative tokens", f"harvest {LM} --tokens -5 --out {{new}}", r"--tokens must be positive"),
    C("tokens not a number", f"harvest {LM} --tokens lots --out {{new}}", r"not a count: 'lots'", 2),
    C("tokens NaN", f"harvest {LM} --tokens nan --out {{new}}", r"not a finite count", 2),
    C("context length 1", f"harvest {LM} --context-len 1 --out {{new}}", r"context length 1 is too short"),
    C("context length beyond the model", f"harvest {LM} --context-len 100000 --out {{new}}",
      r"--context-len 100000 is longer than the model supports \(256 positions\)"),
    C("layer that does not exist", f"harvest {LM} --hook resid.99 --out {{new}}", r"unknown hook 'resid\.99'; closest valid names"),
    C("empty hook name", [*f"harvest {LM} --out {{new}}".split(), "--hook", ""], r"expected a comma-separated list, got ''", 2),
    C("module that does not exist", f"harvest {LM} --hook model.layers.1.nope --out {{new}}", r"unknown hook 'model\.layers\.1\.nope'"),
    C("corpus file that does not exist", f"harvest {LM} --dataset /no/such.txt --out {{new}}", r"corpus file or folder /no/such\.txt does not exist"),
    C("empty corpus file", f"harvest {LM} --dataset {{empty_txt}} --out {{new}}", r"holds no text"),
    C("binary corpus file", f"harvest {LM} --dataset {{garbage_txt}} --out {{new}}", r"is not UTF-8 text"),
    C("malformed jsonl", f"harvest {LM} --dataset {{bad_jsonl}} --out {{new}}", r"line 2: not valid JSON"),
    C("jsonl without the text column", f"harvest {LM} --dataset {{other_jsonl}} --out {{new}}", r"no column 'text'.*body"),
    C("csv corpus", f"harvest {LM} --dataset {{csv}} --out {{new}}", r"must be all \.txt, all \.jsonl or all \.parquet"),
    C("folder without corpus files", f"harvest {LM} --dataset {{empty_dir}} --out {{new}}", r"holds no \.txt, \.jsonl or \.parquet"),
    C("damaged parquet", f"harvest {LM} --dataset {{bad_parquet}} --out {{new}}", r"could not read the parquet corpus"),
    C("--out is a file", f"harvest {LM} --out {{text_file}}", r"exists and is a file", protect="text_file"),
    C("--out is not empty", f"harvest {LM} --out {{store}}", r"exists and is not empty; pass --resume", protect="store"),
    C("--resume with other hooks on a finished store", "harvest --model {lm} --hook mlp.1 --tokens 8192 --context-len 32 "
      "--shard-tokens 2048 --out {store} --resume", r"different settings \(hooks", protect="store"),
    C("--resume on a folder that is no store", f"harvest {LM} --out {{nonempty_dir}} --resume", r"holds no manifest\.json",
      protect="nonempty_dir"),
    C("--overwrite over foreign files", f"harvest {LM} --out {{nonempty_dir}} --overwrite", r"not part of a store",
      protect="nonempty_dir"),
    C("unknown store dtype", f"harvest {LM} --store-dtype int8 --out {{new}}", r"invalid choice: 'int8'", 2),
    C("empty --out", [*f"harvest {LM}".split(), "--out", ""], r"--out is empty"),
    C("zero batch size", f"harvest {LM} --batch-size 0 --out {{new}}", r"--batch-size must be positive"),
    # ------------------------------------------------------------------ verify
    C("verify a folder that is no store", "verify {empty_dir}", r"is not an activation store \(no manifest\.json\)"),
    C("verify a damaged manifest", "verify {bad_manifest_store}", r"manifest\.json is not valid JSON", protect="bad_manifest_store"),
    C("verify a corrupted shard", "verify {corrupt_store}", r"1 of 4 shards failed verification", protect="corrupt_store"),
    # ------------------------------------------------------------------ train
    C("train: store that does not exist", "train --store /no/store --out {new}", r"/no/store is not an activation store"),
    C("train: a run given as the store", "train --store {run} --out {new}", r"is not an activation store"),
    C("train: lr NaN", "train --store {store} --out {new} --lr nan", r"not a finite number", 2),
    C("train: lr infinite", "train --store {store} --out {new} --lr inf", r"not a finite number", 2),
    C("train: lr zero", "train --store {store} --out {new} --lr 0", r"--lr must be positive"),
    C("train: unknown architecture", "train --store {store} --out {new} --arch gru", r"unknown --arch 'gru'; choose from sae, topk"),
    C("train: k zero", "train --store {store} --out {new} --arch topk --k 0", r"--k takes one or more positive integers"),
    C("train: k beyond the latents", "train --store {store} --out {new} --hook resid.1 --arch topk --k 100000",
      r"k must be between 1 and d_sae"),
    C("train: hook not in the store", "train --store {store} --out {new} --hook resid.2", r"the store has no hook 'resid\.2'; it holds"),
    C("train: fewer tokens than a batch", "train --store {store} --out {new} --hook resid.1 --tokens 10",
      r"10 tokens make no full batch"),
    C("train: negative λ", "train --store {store} --out {new} --l1 -1", r"--l1 takes one or more non-negative values"),
    C("train: fraction above 1", "train --store {store} --out {new} --lr-warmup-fraction 2", r"must be in \[0, 1\]"),
    C("train: a model twice", "train --store {store} --out {new} --arch sae,sae", r"lists a model twice"),
    C("train: --resume without a checkpoint", "train --out {empty_dir} --resume", r"holds no checkpoint to continue from"),
    C("train: a run already there", "train --store {store} --out {run_dir_parent} --hook resid.1",
      r"already holds a run; continue it with --resume", protect="run_dir_parent"),
    C("train: CUDA asked for, none here", "train --store {store} --out {new} --hook resid.1 --device cuda",
      r"CUDA is not available here; use --device cpu"),
    C("train: a dictionary larger than memory", "train --store {store} --out {new} --hook resid.1 --d-sae 1G",
      r"need about .* GiB .* is available"),
    C("train: expansion zero", "train --store {store} --out {new} --expansion 0", r"--expansion must be positive"),
    # ------------------------------------------------------------------ evaluate
    C("evaluate: no --run", "evaluate", r"the following arguments are required: --run", 2),
    C("evaluate: run that does not exist", "evaluate --run /no/run", r"is not an autoencoder run directory"),
    C("evaluate: a store given as the run", "evaluate --run {store}", r"is not an autoencoder run directory"),
    C("evaluate: damaged weights", "evaluate --run {truncated_run}", r"weights\.safetensors cannot be read",
      protect="truncated_run"),
    C("evaluate: damaged config.json", "evaluate --run {bad_config_run}", r"config\.json is not valid JSON",
      protect="bad_config_run"),
    C("evaluate: negative CE contexts", "evaluate --run {run} --ce-contexts -1", r"--ce-contexts non-negative"),
    C("evaluate: store of another width", "evaluate --run {run} --store {other_store}", r"takes d_in=32 but .* has d=16"),
    # ------------------------------------------------------------------ analyze / features
    C("analyze: no --out", "analyze --run {run}", r"required: --out", 2),
    C("analyze: zero examples", "analyze --run {run} --out {new} --examples 0", r"--examples must be at least 1"),
    C("analyze: histogram bins not a power of two", "analyze --run {run} --out {new} --hist-bins 48",
      r"hist-bins must be a power of two"),
    C("analyze: unknown split", "analyze --run {run} --out {new} --split test", r"invalid choice: 'test'", 2),
    C("analyze: --out holds something else", "analyze --run {run} --out {nonempty_dir} --no-logit-effects",
      r"is not empty and does not hold an analysis", protect="nonempty_dir"),
    C("analyze: --out holds an analysis", "analyze --run {run} --out {analysis} --no-logit-effects",
      r"already holds an analysis; pass --overwrite", protect="analysis"),
    C("features: empty text", ["features", "--run", "{run}", "--text", " "], r"--text is empty"),
    C("features: not an analysis", "features --run {run} --text hi --analysis {store}", r"is not an analysis directory"),
    # ------------------------------------------------------------------ dashboard
    C("dashboard: not an analysis", "dashboard --analysis {store} --out {new}", r"is not an analysis directory"),
    C("dashboard: feature ids out of range", "dashboard --analysis {analysis} --out {new} --features 0-99999",
      r"feature id 99999 is out of range"),
    C("dashboard: malformed feature list", "dashboard --analysis {analysis} --out {new} --features abc",
      r"cannot read feature list 'abc'"),
    C("dashboard: densities inverted", "dashboard --analysis {analysis} --out {new} --min-density 0.5 --max-density 0.1",
      r"need 0 ≤ --min-density ≤ --max-density ≤ 1"),
    C("dashboard: --features and --top", "dashboard --analysis {analysis} --out {new} --features 1 --top 3",
      r"not allowed with argument", 2),
    # ------------------------------------------------------------------ steer
    C("steer: nothing to steer", "steer --run {run} --prompt hi", r"nothing to steer"),
    C("steer: malformed feature", "steer --run {run} --feature abc --prompt hi", r"cannot read 'abc': write FEATURE=VALUE"),
    C("steer: feature out of range", "steer --run {run} --feature 99999=1 --prompt hi", r"feature 99999 is out of range"),
    C("steer: relative value without analysis", "steer --run {run} --feature 1=2x --prompt hi",
      r"a value ending in x is a multiple of the feature's max activation"),
    C("steer: no prompt", "steer --run {run} --feature 1=2", r"no prompt given"),
    C("steer: prompt file missing", "steer --run {run} --feature 1=2 --prompt-file /no/prompts.txt",
      r"prompt file /no/prompts\.txt does not exist"),
    C("steer: malformed sweep", "steer --run {run} --feature 1=2 --prompt hi --sweep a,b", r"cannot read sweep value 'a'"),
    C("steer: zero new tokens", "steer --run {run} --feature 1=2 --prompt hi --max-new-tokens 0",
      r"max_new_tokens must be at least 1"),
    C("steer: top-p above 1", "steer --run {run} --feature 1=2 --prompt hi --top-p 2", r"top_p in \(0, 1\]"),
    # ------------------------------------------------------------------ demo
    C("demo: --work is a file", "demo --quick --work {text_file}", r"is a file|Not a directory|not a directory",
      protect="text_file"),
    C("demo: zero tokens", "demo --quick --work {new} --tokens 0", r"--tokens must be positive"),
)


def build_narrow_store(root: Path, tokenizer) -> Path:
    """A store of a 16-wide tiny Llama: a store of another width than the tiny runs take."""
    import torch
    import transformers as tf

    from sae_kit.harvest import HarvestConfig, harvest

    config = tf.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, max_position_embeddings=64, vocab_size=len(tokenizer),
                            bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    model_dir = root / "narrow-llama"
    tf.LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return harvest(HarvestConfig(out=str(root / "narrow-store"), model=str(model_dir), hooks=("resid.1",), tokens=1024,
                                 context_len=32, shard_tokens=512), progress=False)


def build_inputs(root: Path) -> dict:
    """Outside pytest (scripts/fault_injection.py): the tiny Llama, its store, a calibrated run and
    its analysis, built as the session fixtures of tests/conftest.py build them."""
    from sae_kit.analysis import AnalysisConfig, analyze
    from sae_kit.harvest import HarvestConfig, harvest
    from tests.conftest import HIST_BINS, QUANTILES, TOP_K, build_model, build_tokenizer, calibrated_autoencoder

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    lm = root / "tiny-llama"
    build_model("llama", len(tokenizer)).save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    store = harvest(HarvestConfig(out=str(root / "store"), model=str(lm), hooks=("resid.1", "mlp.1"), tokens=8192,
                                  context_len=32, shard_tokens=2048, batch_size=16), progress=False)
    run = calibrated_autoencoder(store).save(root / "run")
    analysis = analyze(AnalysisConfig(run=str(run), out=str(root / "analysis"), top_k=TOP_K, n_quantiles=QUANTILES,
                                      hist_bins=HIST_BINS, batch_size=1000), progress=False)
    return {"tokenizer": tokenizer, "lm": lm, "store": store, "run": run, "analysis": analysis,
            "narrow_store": build_narrow_store(root, tokenizer)}


def build_world(root: Path, tiny_store: Path, tiny_run: Path, tiny_analysis, tiny_llama_dir: Path,
                other_store: Path) -> dict[str, str]:
    """Real files for every placeholder: broken copies of real artifacts, and bad corpora."""
    root.mkdir(parents=True, exist_ok=True)
    w = {"store": str(tiny_store), "run": str(tiny_run), "analysis": str(tiny_analysis.path), "lm": str(tiny_llama_dir),
         "other_store": str(other_store)}

    def put(name: str, data: bytes | str) -> str:
        path = root / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    w["text_file"] = put("note.txt", "just a note\n")
    w["empty_txt"] = put("empty.txt", "")
    w["garbage_txt"] = put("garbage.txt", bytes(range(128, 256)) * 8)
    w["bad_jsonl"] = put("bad.jsonl", '{"text": "fine"}\n{not json\n')
    w["other_jsonl"] = put("other.jsonl", '{"body": "x"}\n')
    w["csv"] = put("data.csv", "a,b\n1,2\n")
    w["bad_parquet"] = put("bad.parquet", b"PAR1 this is not parquet")
    w["fake_gguf"] = put("model.gguf", b"GGUF" + bytes(64))
    for name in ("empty_dir", "nonempty_dir"):
        (root / name).mkdir(exist_ok=True)
        w[name] = str(root / name)
    (root / "nonempty_dir" / "keep.txt").write_text("mine")
    truncated_model = root / "truncated_model"
    shutil.copytree(tiny_llama_dir, truncated_model)
    weights = truncated_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    w["truncated_model"] = str(truncated_model)
    truncated_run = root / "truncated_run"
    shutil.copytree(tiny_run, truncated_run)
    (truncated_run / "weights.safetensors").write_bytes((truncated_run / "weights.safetensors").read_bytes()[:100])
    w["truncated_run"] = str(truncated_run)
    bad_config_run = root / "bad_config_run"
    shutil.copytree(tiny_run, bad_config_run)
    (bad_config_run / "config.json").write_text("{ not json")
    w["bad_config_run"] = str(bad_config_run)
    corrupt_store = root / "corrupt_store"
    shutil.copytree(tiny_store, corrupt_store)
    shard = sorted(corrupt_store.glob("shard-*"))[1]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte flipped: only the checksum can tell
    shard.write_bytes(bytes(data))
    w["corrupt_store"] = str(corrupt_store)
    bad_manifest_store = root / "bad_manifest_store"
    bad_manifest_store.mkdir()
    (bad_manifest_store / "manifest.json").write_text("{ truncated")
    w["bad_manifest_store"] = str(bad_manifest_store)
    run_parent = root / "run_parent"
    shutil.copytree(tiny_run, run_parent)
    w["run_dir_parent"] = str(run_parent)
    return w


def fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file): what 'unchanged' means."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path) if p != path else p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@dataclass(frozen=True)
class Outcome:
    """What one case did."""

    code: int
    """Exit status."""
    stderr: str
    """Everything printed on stderr."""
    traceback: bool
    """Whether an exception escaped (or a traceback was printed)."""
    changed: bool
    """Whether the protected artifact changed."""

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if "error:" in line or "Traceback" in line]


def run_case(case: Case, world: dict[str, str], scratch: Path) -> Outcome:
    """Run one case in-process (`sae_kit.cli.main`), with {new} a fresh path under `scratch`."""
    from sae_kit.cli import main

    scratch.mkdir(parents=True, exist_ok=True)
    fill = {**world, "new": str(scratch / "out")}
    argv = [part.format(**fill) for part in case.argv]
    before = fingerprint(fill[case.protect]) if case.protect else None
    err = io.StringIO()
    traceback = False
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # anything escaping main is a traceback for the user
            traceback, code = True, -1
    stderr = err.getvalue()
    changed = before is not None and fingerprint(fill[case.protect]) != before
    return Outcome(code, stderr, traceback or "Traceback" in stderr, changed)


def write_cases_json(path: Path) -> None:
    """The battery as JSON (for the README's table and external tools)."""
    path.write_text(json.dumps([c.__dict__ for c in CASES], indent=1, ensure_ascii=False))
