"""train.run_name becomes the folder runs/<run_name> under the run root (and part of Ray Train's
run name): it is validated with the config, so it can neither leave the run root nor hide
(issue 17, Build 5). Every other path-like key is a whole path or URI by design (run_root,
ingest.source, intents.cache_dir / prompt_dir, train.ray_storage) or a model name resolved
against a fixed list (intents.model)."""

import subprocess
import sys
from pathlib import Path

import pytest

from irllrec_dist.config import Config, ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]

BAD = [
    "../x",
    "..",
    ".",
    "a/b",
    "/abs",
    "a\\b",
    "..\\x",
    ".hidden",
    "",
    "a..b",
    "x y",
    "tab\tname",
    "new\nline",
    "é",
    "a:b",
    "~",
    "$HOME",
    "*",
    "a" * 129,
]
GOOD = ["lightgcn", "irllrec-s2024", "demo-irllrec", "a.b_c-1", "A9", "x" * 128, "v1.2"]


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_bad_run_names_are_refused_at_validation(name):
    with pytest.raises(ConfigError, match=r"train\.run_name") as err:  # some names are not even valid YAML
        load_config(None, [f"train.run_name={name}"])
    assert "\n" not in str(err.value)
    cfg = Config()
    cfg.train.run_name = name
    with pytest.raises(ConfigError, match=r"^train\.run_name"):
        cfg.validate()
    # the Ray worker's path (config_from_dict) validates too
    data = Config().to_dict()
    data["train"]["run_name"] = name
    with pytest.raises(ConfigError, match=r"^train\.run_name"):
        config_from_dict(data)


@pytest.mark.parametrize("name", GOOD)
def test_good_run_names_pass(name):
    assert load_config(None, [f"train.run_name={name}"]).train.run_name == name


def test_run_name_from_a_preset_is_refused(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  run_name: ../../etc\n")
    with pytest.raises(ConfigError, match=r"train\.run_name='\.\./\.\./etc' contains '/'"):
        load_config(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_cli_refuses_traversal_before_touching_storage(tmp_path, stage):
    root = tmp_path / "root"
    proc = subprocess.run(
        [sys.executable, "-m", f"irllrec_dist.{stage}", f"run_root={root}", "train.run_name=../x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"{stage}: train.run_name='../x' contains '/': it names the folder runs/<run_name> under the run root, so "
        "it must be 1-128 characters of A-Z a-z 0-9 . _ -, not start with '.' and not contain '..'"
    ]
    assert not root.exists() and not (tmp_path / "x").exists()
