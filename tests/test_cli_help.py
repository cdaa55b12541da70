"""The `irllrec` command (issue 21, Build 3): the installed console script runs every stage;
`--help` lists the stage's config keys with defaults and meanings; a misspelled key or a bad value
is one line on stderr naming the closest valid key, exit code 2, no traceback; `--print-config`
prints the resolved YAML and exits 0."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from irllrec_dist import cli, console
from irllrec_dist.config import STAGE_SECTIONS, load_config

REPO = Path(__file__).resolve().parents[1]
IRLLREC = Path(sys.executable).parent / "irllrec"  # installed by `pip install -e .` ([project.scripts])


def _irllrec(*args: str) -> subprocess.CompletedProcess:
    assert IRLLREC.exists(), f"{IRLLREC}: the console script is not installed (bash launch/setup.sh)"
    return subprocess.run([str(IRLLREC), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess, stage: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


def test_train_help_through_the_console_script_lists_keys_with_defaults_and_meanings():
    proc = _irllrec("train", "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: irllrec train ")
    assert "--print-config" in out and "--debug" in out
    # the sections train reads, each key with its default and the comment beside it in config.py
    assert re.search(r"^  train\.seed=2023 +seeds initialisation", out, re.M), out
    assert re.search(r"^  train\.lr=0\.001 +Adam learning rate", out, re.M), out
    assert re.search(r"^  eval\.ks=\[5, 10, 20\] +cut-offs K", out, re.M), out
    assert re.search(r"^  model\.dim=32 +embedding dimension", out, re.M), out
    assert re.search(r"^  loss\.warmup_epochs=0\.0 ", out, re.M), out
    assert re.search(r"^  run_root=runs/demo ", out, re.M), out
    assert "ingest.format" not in out and "intents.backend" not in out  # not train's sections
    assert "docs/config.md" in out


def test_misspelled_key_names_the_closest_one():
    line = _one_line(_irllrec("train", "train.sed=1"), "train")
    assert line.startswith("train: unknown config key(s): train.sed; ")
    assert line.endswith("did you mean train.seed?")
    line = _one_line(_irllrec("train", "trian.seed=1", "--config", "configs/lightgcn.yaml"), "train")
    assert line.startswith("train: unknown config key(s): trian; ") and line.endswith("did you mean train.seed?")


def test_bad_values_are_one_line():
    line = _one_line(_irllrec("train", "train.lr=abc"), "train")
    assert line == "train: train.lr: expected a number, got 'abc'"
    line = _one_line(_irllrec("train", "train.sampler=dgll"), "train")
    assert line == "train: train.sampler must be torch, dgl or auto, got 'dgll'; did you mean dgl?"


def test_print_config_prints_the_resolved_yaml_and_runs_nothing(tmp_path):
    proc = _irllrec(
        "train",
        "--print-config",
        "--config",
        "configs/irllrec.yaml",
        "train.seed=7",
        f"run_root={tmp_path / 'nowhere'}",
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert data["train"]["seed"] == 7 and data["model"]["name"] == "irllrec" and data["eval"]["ks"] == [5, 10, 20]
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "resolved.yaml").write_text(proc.stdout)  # reads back to the same config
    assert load_config(str(tmp_path / "resolved.yaml")) == load_config(
        "configs/irllrec.yaml", ["train.seed=7", f"run_root={tmp_path / 'nowhere'}"]
    )


# -------------------------------------------------------------------------- in-process, every stage


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_every_stage_help_lists_its_sections(stage, capsys):
    with pytest.raises(SystemExit) as e:
        console.main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: irllrec {stage} ")
    for section in STAGE_SECTIONS[stage]:
        key = "run_root=" if section == "run_root" else f"  {section}."
        assert key in out, (stage, section)
    assert cli.PROG is None  # the console's program name does not leak into later python -m runs


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_every_stage_prints_its_config_and_refuses_a_misspelled_key(stage, capsys):
    assert console.main([stage, "--print-config", "train.seed=5"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and yaml.safe_load(out)["train"]["seed"] == 5
    assert console.main([stage, "--print-config", "eval.kss=[1]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{stage}: unknown config key(s): eval.kss")
    assert err[0].endswith("did you mean eval.ks?")


def test_report_bench_and_config_doc_are_subcommands(capsys, tmp_path):
    assert console.main(["report", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("report: FileNotFoundError: ")
    with pytest.raises(SystemExit) as e:
        console.main(["bench", "--help"])
    assert e.value.code == 0 and "sampler" in capsys.readouterr().out
    assert console.main(["config-doc"]) == 0
    assert capsys.readouterr().out == (REPO / "docs" / "config.md").read_text()


def test_unknown_command_and_no_command(capsys):
    assert console.main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("irllrec: unknown command 'trian'; did you mean train?")
    assert console.main([]) == 2 and "commands:" in capsys.readouterr().err
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "intents", "embed", "train", "evaluate", "pipeline", "report", "bench"):
        assert re.search(rf"^  {name} ", out, re.M), name


def test_python_dash_m_forms_keep_working():
    proc = subprocess.run(
        [sys.executable, "-m", "irllrec_dist.evaluate", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m irllrec_dist.evaluate ")
    assert "eval.export_top_k=20" in proc.stdout


def test_usage_lines_in_stage_docstrings_run():
    """The examples at the top of each stage cite presets that exist and flags that parse."""
    for path in sorted((REPO / "irllrec_dist").glob("*.py")):
        text = path.read_text()
        for preset in re.findall(r"--config (configs/[a-z0-9_./-]+\.yaml)", text):  # not placeholders (NAME)
            assert (REPO / preset).is_file(), f"{path.name} cites {preset}, which does not exist"
    doc = (REPO / "irllrec_dist" / "evaluate.py").read_text().split('"""')[1]
    assert "[split=" not in doc and "--split val|test" in doc
