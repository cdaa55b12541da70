"""One error path for every stage (issue 17, Build 7; irllrec_dist/cli.py): input, config,
storage and checkpoint errors end as ONE line `<stage>: <message>` on stderr with exit code 2 and
no traceback unless --debug; a bug keeps its traceback (exit code 1)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from irllrec_dist import artifacts, cli, ingest, storage, train
from irllrec_dist.config import Config, ConfigError, SyntheticConfig
from irllrec_dist.data import synthetic
from irllrec_dist.data.readers import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIG_STAGES = ["ingest", "intents", "embed", "train", "evaluate", "pipeline"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess, stage: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    raw = tmp / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    cfg = Config(run_root=str(tmp / "root"))
    cfg.ingest.source = str(raw)
    cfg.train.max_epochs, cfg.train.threads, cfg.train.batch_size, cfg.train.run_name = 2, 1, 256, "c"
    cfg.validate()
    ingest.run(cfg)
    train.run(cfg)
    return cfg


def test_misspelled_key_is_one_line_and_debug_adds_the_traceback():
    line = _one_line(_run("irllrec_dist.train", "train.sed=1"), "train")
    assert line.startswith("train: unknown config key(s): train.sed; known under 'train.': ")
    debug = _run("irllrec_dist.train", "--debug", "train.sed=1")
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr and debug.stderr.strip().splitlines()[-1] == line


@pytest.mark.parametrize("stage", CONFIG_STAGES)
def test_every_stage_main_turns_config_errors_into_one_line(stage, capsys):
    """In-process through each stage's own main(): same helper, no interpreter start per stage."""
    main = importlib.import_module(f"irllrec_dist.{stage}").main
    for override, message in (
        ("train.sed=1", "unknown config key(s): train.sed"),
        ("train.lr=[1,", "override 'train.lr=[1,': the value is not valid YAML"),
        ("train.seed=~", "train.seed: expected a value, got null"),
    ):
        assert main([override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{stage}: {message}"), err


def test_bad_yaml_preset_names_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  lr: 0.1\n  seed: [1,\n")
    line = _one_line(_run("irllrec_dist.ingest", "--config", str(tmp_path / "bad.yaml")), "ingest")
    assert f"{tmp_path / 'bad.yaml'} line 4" in line and "not valid YAML" in line


def test_report_and_bench_use_the_same_path(tmp_path, capsys):
    from irllrec_dist import bench, report

    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"report: FileNotFoundError: {tmp_path / 'nowhere' / 'runs'}: no runs folder (train a run under this run root)"
    ]
    assert bench.main(["step", "--config", str(tmp_path / "none.yaml"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("bench: cannot read config file ")


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.parquet").write_bytes(b"PAR1 not parquet at all")
    line = _one_line(
        _run("irllrec_dist.ingest", f"run_root={tmp_path / 'root'}", f"ingest.source={tmp_path / 'raw'}"), "ingest"
    )
    assert line.startswith("ingest: bad input: ") and "train.parquet" in line


def test_truncated_checkpoint_names_the_file(trained):
    uri = artifacts.run_uri(trained, "checkpoints", "best.pt")
    blob = storage.read_bytes(uri)
    try:
        storage.write_bytes(uri, blob[: len(blob) // 2])
        line = _one_line(
            _run("irllrec_dist.evaluate", f"run_root={trained.run_root}", "train.run_name=c", "train.batch_size=256"),
            "evaluate",
        )
        assert line.startswith(
            f"evaluate: {uri}: not a readable checkpoint ({len(blob) // 2} bytes; truncated or corrupt: "
        ), line
    finally:
        storage.write_bytes(uri, blob)


def test_missing_checkpoint_and_missing_dataset_are_one_line(trained, tmp_path):
    line = _one_line(_run("irllrec_dist.evaluate", f"run_root={trained.run_root}", "train.run_name=never"), "evaluate")
    assert "runs/never/checkpoints/best.pt: no checkpoint there" in line
    line = _one_line(_run("irllrec_dist.evaluate", f"run_root={tmp_path / 'empty'}"), "evaluate")
    assert f"{tmp_path / 'empty' / 'dataset'}" in line and "ingest" in line


def test_corrupt_manifest_is_one_line(trained, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(trained.run_root, root)
    manifest = root / "dataset" / storage.GROUP_MANIFEST  # the dataset is one group commit
    manifest.write_text(manifest.read_text()[:40])
    line = _one_line(
        _run("irllrec_dist.evaluate", f"run_root={root}", "train.run_name=c", "train.batch_size=256"), "evaluate"
    )
    assert str(manifest) in line or str(root / "dataset") in line


def test_classification_bugs_keep_their_traceback():
    import argparse

    def fails(exc):
        def body(args):
            raise exc

        return body

    parser = lambda: argparse.ArgumentParser()  # noqa: E731
    assert cli.run_main("x", parser(), fails(InputError("f.csv line 3: expected an integer id")), []) == 2
    assert cli.run_main("x", parser(), fails(ConfigError("k: bad")), []) == 2
    assert cli.run_main("x", parser(), fails(storage.CorruptOutput("m: bad")), []) == 2
    assert cli.run_main("x", parser(), fails(TimeoutError("timed out")), []) == 2
    for bug in (TypeError("unsupported operand"), KeyError("model"), ZeroDivisionError()):
        with pytest.raises(type(bug)):
            cli.run_main("x", parser(), fails(bug), [])

    # a bug raised while handling a user error is still a bug
    def nested(args):
        try:
            raise FileNotFoundError("x")
        except FileNotFoundError:
            raise AttributeError("bug")

    with pytest.raises(AttributeError):
        cli.run_main("x", parser(), nested, [])
    assert cli.run_main("x", parser(), lambda args: None, []) == 0


def test_errors_wrapped_by_ray_train_and_s3_client_errors_are_user_errors():
    import botocore.exceptions
    from ray.train.v2.api.exceptions import WorkerGroupError

    err = cli.NonFiniteLoss("non-finite training loss at epoch 2, step 9")
    wrapped = WorkerGroupError("Training failed due to worker errors", {1: RuntimeError("peer gone"), 0: err})
    assert cli.user_error(wrapped) is err
    assert cli.one_line(err) == "non-finite training loss at epoch 2, step 9"
    s3 = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert cli.user_error(s3) is s3
    assert cli.one_line(s3).startswith("EndpointConnectionError: Could not connect to the endpoint URL")
    assert cli.user_error(RuntimeError("bug")) is None
