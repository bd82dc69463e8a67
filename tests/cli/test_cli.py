"""The command line as a whole: every command listed and documented, flags made from the config
dataclasses (one default each), old spellings still working with a warning, and the layout
rules the CLI package depends on (no stage module imports it, no import cycles)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sae_kit.analysis import AnalysisConfig
from sae_kit.analysis.autointerp import ExplainConfig
from sae_kit.analysis.prompt_view import PromptViewConfig
from sae_kit.autoencoders.saelens import SaelensExportConfig, SaelensImportConfig
from sae_kit.autoencoders.sparsify import SparsifyImportConfig
from sae_kit.cli import COMMANDS, build_parser, main
from sae_kit.config import command_line, config_from_args, given_values
from sae_kit.dashboard import SiteOptions
from sae_kit.demo import DemoConfig
from sae_kit.evaluation import EvalConfig
from sae_kit.harvest import HarvestConfig
from sae_kit.lm.corpus import CorpusSpec
from sae_kit.steering.experiment import SteerConfig
from sae_kit.steering.generate import GenerateOptions
from sae_kit.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sae_kit"
EXPECTED_COMMANDS = {"hooks", "harvest", "verify", "train", "evaluate", "analyze", "features", "dashboard", "steer",
                     "demo", "explain", "export", "import"}
CONFIGS = {  # command -> the config dataclasses whose every flag-able field must be a flag
    "harvest": (HarvestConfig, CorpusSpec), "train": (TrainConfig,), "evaluate": (EvalConfig,),
    "analyze": (AnalysisConfig,), "features": (PromptViewConfig,), "dashboard": (SiteOptions,),
    "steer": (SteerConfig, GenerateOptions), "demo": (DemoConfig,), "explain": (ExplainConfig,),
}


def subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "sae_kit.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert EXPECTED_COMMANDS <= listed, EXPECTED_COMMANDS - listed
    assert set(subcommands()) == EXPECTED_COMMANDS


@pytest.mark.parametrize("command", sorted(EXPECTED_COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sae-kit " + command in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_config_field_is_a_flag_with_the_dataclass_default(command):
    parser = subcommands()[command]
    dests = {a.dest: a for a in parser._actions if a.help != argparse.SUPPRESS}
    for cls in CONFIGS[command]:
        for f in dataclasses.fields(cls):
            if f.type in ("dict", "CorpusSpec") or f.name == "corpus":
                continue
            assert f.name in dests, f"{command}: {cls.__name__}.{f.name} has no flag"
            action = dests[f.name]
            assert action.default is None  # "not given": the dataclass holds the one default
            if f.default is not dataclasses.MISSING and f.default is not None and action.required is False:
                assert repr(f.default).replace("%", "%%") in action.help, (f.name, action.help)


FORMAT_CONFIGS = {("export", "saelens"): SaelensExportConfig, ("import", "saelens"): SaelensImportConfig,
                  ("import", "sparsify"): SparsifyImportConfig}


@pytest.mark.parametrize("command, fmt", sorted(FORMAT_CONFIGS))
def test_every_format_subcommand_field_is_a_flag(command, fmt):
    action = next(a for a in subcommands()[command]._actions if a.dest == "format")
    parser = action.choices[fmt]
    dests = {a.dest: a for a in parser._actions if a.help != argparse.SUPPRESS}
    for f in dataclasses.fields(FORMAT_CONFIGS[command, fmt]):
        assert f.name in dests and dests[f.name].default is None, (command, fmt, f.name)


def test_flags_map_one_to_one_onto_the_config():
    parser = subcommands()["train"]
    args = parser.parse_args(["--store", "s", "--out", "o", "--arch", "sae,topk", "--k", "16,32", "--l1", "1",
                              "--l1", "2", "--tokens", "2M", "--compute-dtype", "bfloat16", "--no-normalize-inputs"])
    cfg = config_from_args(TrainConfig, args)
    assert cfg == TrainConfig(store="s", out="o", archs=("sae", "topk"), ks=(16, 32), l1_coefficients=(1.0, 2.0),
                              tokens=2_000_000, dtype="bfloat16", normalize_inputs=False)
    assert given_values(args, TrainConfig)["archs"] == ("sae", "topk")


def test_prompts_keep_their_commas_and_command_lines_round_trip():
    parser = subcommands()["steer"]
    argv = ["--run", "r", "--feature", "1=2x", "--prompt", "Hello, world", "--prompt", "b", "--sweep=-1,0,1",
            "--temperature", "0.5", "--no-prepend-bos"]
    args = parser.parse_args(argv)
    cfg, options = config_from_args(SteerConfig, args), config_from_args(GenerateOptions, args)
    assert cfg.prompt == ("Hello, world", "b") and cfg.sweep == "-1,0,1"
    again = parser.parse_args(shlex.split(command_line("", [cfg, options])))
    assert config_from_args(SteerConfig, again) == cfg and config_from_args(GenerateOptions, again) == options


@pytest.mark.parametrize("command, old, new, field, value", [
    (["harvest", "--out", "o"], ["--dtype", "bfloat16"], "--store-dtype", "dtype", "bfloat16"),
    (["train", "--store", "s", "--out", "o"], ["--dtype", "bfloat16"], "--compute-dtype", "dtype", "bfloat16"),
    (["steer", "--run", "r"], ["--dtype", "float16"], "--model-dtype", "model_dtype", "float16"),
    (["analyze", "--run", "r", "--out", "o"], ["--top-k", "7"], "--examples", "top_k", 7),
    (["analyze", "--run", "r", "--out", "o"], ["--no-logits"], "--no-logit-effects", "logit_effects", False),
    (["analyze", "--run", "r", "--out", "o"], ["--keep-bos"], "--no-skip-bos", "skip_bos", False),
    (["features", "--run", "r", "--text", "t"], ["--no-bos"], "--no-prepend-bos", "prepend_bos", False),
])
def test_old_spellings_still_work_with_a_deprecation_warning(command, old, new, field, value, capsys):
    args = build_parser().parse_args(command + old)
    assert getattr(args, field) == value
    err = capsys.readouterr().err
    assert "deprecated" in err and new in err and old[0] in err


def test_usage_errors_exit_2_and_runtime_errors_exit_1_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate"])  # --run missing
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sae-kit evaluate: error:")
    with pytest.raises(Exception) as raised:  # --debug shows the real exception instead
        main(["--debug", "evaluate", "--run", str(tmp_path / "nothing")])
    assert "not an autoencoder run directory" in str(raised.value)


def test_error_lines_of_processes_sharing_stderr_never_interleave():
    """torchrun's ranks share one stderr pipe: each error line must arrive whole (one write(2))."""
    writer = ("import sys; from sae_kit.errors import print_error_line\n"
              "for i in range(300): print_error_line(f'sae-kit test: error: rank {sys.argv[1]} line {i} ' + 'x' * 200)")
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(rank)], stderr=write) for rank in (0, 1)]
    os.close(write)
    with open(read, encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    assert [p.wait() for p in procs] == [0, 0]
    assert len(lines) == 600
    assert all(line.startswith("sae-kit test: error: rank ") and line.endswith("x" * 200) and line.count("error:") == 1
               for line in lines)


# ----------------------------------------------------------------------------- layout


def module_imports() -> dict[str, set[str]]:
    """Module name -> the sae_kit modules it imports (also inside functions), resolved like Python does."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_stage_module_imports_the_cli():
    offenders = [name for name, deps in module_imports().items()
                 if not name.startswith("sae_kit.cli") and any(d.startswith("sae_kit.cli") for d in deps)]
    assert offenders == []


def test_only_the_registry_knows_architecture_names():
    """Outside sae_kit/autoencoders, no code branches on an architecture's name: it asks the class."""
    import re

    pattern = re.compile(r"""arch\s*(==|!=|in|not in)\s*[\(\['"]|['"](sae|topk|ae|dae|vae|pca)['"]\s*(==|in)\s*\w*arch""")
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in PACKAGE.rglob("*.py") if "autoencoders" not in path.parts
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_every_command_module_is_registered():
    on_disk = {p.stem for p in (PACKAGE / "cli").glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert on_disk == {m.__name__.rsplit(".", 1)[1] for m in COMMANDS}
