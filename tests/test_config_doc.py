"""docs/config.md is generated from the config dataclasses (issue 21, Build 2) and must be current:
regenerate it with `python -m irllrec_dist.config --markdown > docs/config.md`."""

import subprocess
import sys
from pathlib import Path

from irllrec_dist import config
from irllrec_dist.config import Config, config_keys, field_docs, flatten, markdown, reference, sections

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "config.md"


def test_docs_config_md_is_up_to_date():
    assert DOC.is_file(), f"{DOC} is missing: run {config.DOC_COMMAND}"
    assert DOC.read_text() == markdown(), (
        f"{DOC.relative_to(REPO)} is out of date with irllrec_dist/config.py: run {config.DOC_COMMAND}"
    )


def test_the_module_command_prints_the_same_file():
    proc = subprocess.run(
        [sys.executable, "-m", "irllrec_dist.config", "--markdown"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == markdown(), proc.stderr


def test_every_key_is_documented_once_with_its_default_and_a_meaning():
    docs = [d for sec in sections() for d in reference(sec)]
    assert [d.key for d in docs] == config_keys()
    assert len(config_keys()) == len(set(config_keys()))
    missing = [d.key for d in docs if not d.meaning.strip()]
    assert not missing, f"config fields without a comment beside them (add a one-line meaning): {missing}"
    text = DOC.read_text()
    defaults = flatten(Config().to_dict())
    for d in docs:
        assert f"| `{d.key}` |" in text
        if (
            d.key in defaults
            and isinstance(defaults[d.key], (int, float, str))
            and not isinstance(defaults[d.key], bool)
            and defaults[d.key] != ""
        ):
            assert d.default == str(defaults[d.key]), d


def test_meanings_come_from_the_comments_beside_the_fields():
    docs = field_docs(config.TrainConfig)
    assert docs["patience"] == "validation checks without improvement before stopping"  # trailing comment
    assert docs["min_epochs"].startswith("No early stop before this many epochs. With the text losses on")  # block
    assert docs["fanouts"].endswith("only those embedding rows are exchanged between ranks.")
    rows = {d.key: d for d in reference("eval")}
    assert rows["eval.ks"].type == "list of int" and rows["eval.ks"].default == "[5, 10, 20]"
    assert rows["eval.mask_val_in_test"].default == "false"
    assert {d.key: d for d in reference("synthetic")}["synthetic.intents_per_user"].type == "[int, int]"
    assert {d.key: d for d in reference("intents")}["intents.cache_dir"].default == '""'
