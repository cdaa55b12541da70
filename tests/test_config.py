import pytest

from irllrec_dist.config import ConfigError, load_config


def test_presets_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.01\n  seed: 1\nmodel:\n  dim: 16\n")
    (tmp_path / "top.yaml").write_text("include: [base.yaml]\ntrain:\n  seed: 2\n")
    cfg = load_config(str(tmp_path / "top.yaml"), ["train.seed=7", "eval.ks=[1,2]", "eval.monitor_k=2"])
    assert (cfg.train.lr, cfg.train.seed, cfg.model.dim) == (0.01, 7, 16)
    assert cfg.eval.ks == (1, 2)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", r"unknown config key\(s\): train.lrr"),
        ("train.seed=abc", r"train.seed: expected an integer"),
        ("train.edge_keep=1.5", r"train.edge_keep must be in \(0, 1\]"),
        ("eval.monitor_k=7", r"eval.monitor_k must be one of eval.ks"),
        ("ingest.format=xml", r"ingest.format must be"),
        ("synthetic.intents_per_user=[0,2]", r"synthetic.intents_per_user must satisfy"),
        ("nonsense", r"must look like section.key=value"),
        ("train.fanouts=10,x", r"train.fanouts must be 'full' or positive ints"),
        ("train.fanouts=10,10", r"train.fanouts has 2 layers, model.layers is 3"),
        ("train.fanouts=0,5,5", r"train.fanouts must be 'full' or positive ints"),
        ("embed.text_source=llm", r"embed.text_source must be auto, raw or intents"),
        ("intents.actors=-1", r"intents.actors, cpus_per_actor and gpus_per_actor must be >= 0"),
    ],
)
def test_bad_config_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_shipped_presets_load():
    import pathlib

    for p in sorted((pathlib.Path(__file__).parents[1] / "configs").glob("*.yaml")):
        load_config(str(p))
