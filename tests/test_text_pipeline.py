"""The text path end to end with the real MiniLM model: embed -> IRLLRec training -> evaluate."""

import io
import shutil

import numpy as np
import pytest
import torch

from irllrec_dist import artifacts, embed, evaluate, ingest, scoring, storage, train
from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic


def test_embed_then_train_irllrec(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    cfg = Config(run_root=str(tmp_path / "root"))
    cfg.ingest.source = str(raw)
    cfg.model.intents = 8
    for k, v in dict(prf=0.01, ia=0.02, ta=0.02, itm=0.02, itm_max_nodes=32).items():
        setattr(cfg.loss, k, v)
    cfg.train.max_epochs, cfg.train.threads, cfg.train.batch_size, cfg.train.run_name = 4, 1, 256, "irl"
    cfg.validate()
    ingest.run(cfg)
    embed.run(cfg)

    data = ds.load(cfg.run_root)
    items = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "items"))
    users = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "users"))
    assert items.schema.field("profile").type.list_size == 384
    iv = np.stack(items.column("profile").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    # a user's vector is the normalised mean of its TRAINING items' vectors only
    u0 = int(users.column("id")[0].as_py())
    mine = data.train[data.train[:, 0] == u0, 1]
    mean = iv[np.searchsorted(items.column("id").to_numpy(), mine)].mean(0)
    uv = np.asarray(users.column("profile")[0].as_py())
    assert np.allclose(uv, mean / np.linalg.norm(mean), atol=1e-5)

    before = storage.read_manifest(artifacts.embeddings_uri(cfg.run_root, "items"))
    embed.run(cfg)  # same config: skipped, nothing rewritten
    assert storage.read_manifest(artifacts.embeddings_uri(cfg.run_root, "items")) == before

    summary = train.run(cfg)
    terms = set(summary["history"][0])
    assert {"bpr", "reg", "prf", "ia", "ta", "itm"} <= terms
    assert all(np.isfinite(summary["history"][-1][t]) for t in ("prf", "ia", "ta", "itm"))
    ckpt = torch.load(
        io.BytesIO(storage.read_bytes(artifacts.run_uri(cfg, "checkpoints", "best.pt"))), weights_only=True
    )
    assert ckpt["teacher"] is not None and ckpt["text_dim"] == 384
    assert "module.user_protos" in ckpt["teacher"]
    again = evaluate.run(cfg, "test", export=False)
    assert again["recall@20"] == summary["test"]["recall@20"]
    rows = evaluate.reference_rows(cfg)
    assert set(rows) == {"popularity", "text_only"}

    # train.compile: the same step through torch.compile (dynamic shapes, every loss term on)
    # follows the eager run up to the rounding that fused kernels change
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    cfg.train.compile, cfg.train.max_epochs, cfg.train.run_name = True, 2, "irl_compiled"
    compiled = train.run(cfg)
    for eager_epoch, compiled_epoch in zip(summary["history"][:2], compiled["history"], strict=True):
        for term in ("loss", "bpr", "prf", "ia", "ta", "itm"):
            assert compiled_epoch[term] == pytest.approx(eager_epoch[term], rel=1e-3), term


def _write_intents(root: str, side: str, rows: list[tuple[int, str, list[str]]]) -> None:
    """An intents output as the LLM stage commits it (schema and manifest), written directly."""
    import pyarrow as pa

    from irllrec_dist import intents

    n = len(rows)
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "profile": [r[1] for r in rows],
            "intents": [r[2] for r in rows],
            "raw_output": ["..."] * n,
            "status": ["ok"] * n,
            "attempts": [1] * n,
            "fallback": [False] * n,
            "model": ["m"] * n,
            "prompt_hash": ["h"] * n,
            "n_output_tokens": [10] * n,
        },
        schema=intents.SCHEMA,
    )
    storage.write_table(artifacts.side_uri(root, side), table, f"test-{side}")


def test_embed_uses_llm_profiles_and_intents(tmp_path):
    """embed.text_source=auto picks up committed intents: profile vector = the LLM profile, intent
    vector = its intent list; entities without an LLM row fall back (raw text / mean of items)."""
    import pytest

    from irllrec_dist.data.readers import InputError

    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=6, n_users=60, n_items=40, n_intents=4)), str(raw))
    cfg = Config(run_root=str(tmp_path / "root"))
    cfg.ingest.source = str(raw)
    cfg.validate()
    ingest.run(cfg)
    cfg.embed.text_source = "intents"
    with pytest.raises(InputError, match="no committed intents output"):
        embed.run(cfg)
    cfg.embed.text_source = "auto"
    _write_intents(
        cfg.run_root, "items", [(0, "A quiet place to read.", ["reading", "quiet"]), (3, "Loud and fun.", [])]
    )
    _write_intents(cfg.run_root, "users", [(1, "Likes calm cafes.", ["calm cafes"])])
    embed.run(cfg)

    model = embed.Embedder(cfg.embed.model, 8)
    data = ds.load(cfg.run_root)
    items = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "items"))
    users = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "users"))
    meta = storage.read_manifest(artifacts.embeddings_uri(cfg.run_root, "items"))["meta"]
    assert meta["text_source"] == "intents" and meta["from_llm"] == 2 and meta["raw_text_fallback"] == 38

    def vec(table, col, entity):
        ids = table.column("id").to_numpy()
        return np.asarray(table.column(col)[int(np.flatnonzero(ids == entity)[0])].as_py())

    expect = model.encode(
        [
            "A quiet place to read.",
            "reading; quiet",
            "Loud and fun.",
            data.item_text[5],
            "Likes calm cafes.",
            "calm cafes",
        ]
    )
    assert np.allclose(vec(items, "profile", 0), expect[0], atol=1e-5)
    assert np.allclose(vec(items, "intent", 0), expect[1], atol=1e-5)
    assert np.allclose(vec(items, "intent", 3), expect[2], atol=1e-5)  # no intents: the profile stands in
    assert np.allclose(vec(items, "profile", 5), expect[3], atol=1e-5)  # no LLM row: its raw text
    assert np.allclose(vec(items, "intent", 5), expect[3], atol=1e-5)
    assert np.allclose(vec(users, "profile", 1), expect[4], atol=1e-5)
    assert np.allclose(vec(users, "intent", 1), expect[5], atol=1e-5)
    # user 2 has no LLM row: mean of its training items' profile vectors
    mine = data.train[data.train[:, 0] == 2, 1]
    mean = np.stack([vec(items, "profile", int(i)) for i in mine]).mean(0)
    assert np.allclose(vec(users, "profile", 2), mean / np.linalg.norm(mean), atol=1e-5)


def test_ray_data_actors_embed_like_one_process():
    import ray

    from irllrec_dist.config import EmbedConfig

    texts = [f"text number {k} about {'coffee' if k % 2 else 'music'}" for k in range(37)]
    local = embed.encode(texts, EmbedConfig(batch_size=8))
    ray.init(num_cpus=2, address="local", include_dashboard=False)
    try:
        remote = embed.encode(texts, EmbedConfig(batch_size=8, actors=2))
    finally:
        ray.shutdown()
    assert remote.shape == local.shape == (37, 384)
    assert np.allclose(remote, local, atol=1e-5)  # same vectors, same order


def _resumable_cfg(root, raw, run_name: str) -> Config:
    cfg = Config(run_root=str(root))
    cfg.ingest.source = str(raw)
    cfg.model.intents = 8
    # the intent terms' warm-up is still on when the run below is killed (epoch 4 of 5)
    for k, v in dict(prf=0.01, ia=0.02, ta=0.02, itm=0.02, itm_max_nodes=32, warmup_epochs=5).items():
        setattr(cfg.loss, k, v)
    cfg.train.max_epochs, cfg.train.eval_every, cfg.train.patience = 7, 1, 100
    cfg.train.threads, cfg.train.batch_size, cfg.train.run_name = 1, 256, run_name
    cfg.validate()
    return cfg


def test_killed_in_process_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """An in-process IRLLRec run (EMA teacher, every text loss) dies during epoch 4's validation;
    started again it goes on from epoch 3's state and ends exactly where an uninterrupted run
    does: every logged loss and the test metrics equal to the last bit."""
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    clean_cfg = _resumable_cfg(tmp_path / "root", raw, "clean")
    ingest.run(clean_cfg)
    embed.run(clean_cfg)
    clean = train.run(clean_cfg)
    assert clean["resumed_at_epoch"] is None
    # the logged loss is the weighted sum of the terms once the warm-up is over, and less while the
    # intent terms are phased in
    lc = clean_cfg.loss

    def full_weight(r):
        return sum(getattr(lc, t) * r[t] for t in ("bpr", "reg", "prf", "ia", "ta", "itm"))

    assert clean["history"][6]["loss"] == pytest.approx(full_weight(clean["history"][6]), rel=1e-5)
    intent_part = sum(getattr(lc, t) * clean["history"][0][t] for t in ("ia", "ta", "itm"))
    assert clean["history"][0]["loss"] < full_weight(clean["history"][0]) - intent_part / 2

    cfg = _resumable_cfg(tmp_path / "root", raw, "killed")
    real_split_metrics, calls = scoring.split_metrics, []

    def dies_at_fifth_validation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # what Ctrl-C or a lost machine does to the loop
        return real_split_metrics(*args, **kwargs)

    monkeypatch.setattr(scoring, "split_metrics", dies_at_fifth_validation)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    monkeypatch.setattr(scoring, "split_metrics", real_split_metrics)
    state_uri = artifacts.run_uri(cfg, "checkpoints", "state.pt")
    assert storage.exists(state_uri) and not storage.exists(artifacts.run_uri(cfg, "metrics.json"))

    other = _resumable_cfg(tmp_path / "root", raw, "killed")
    other.loss.ia = 0.05
    with pytest.raises(ValueError, match=r"state\.pt: saved by a run with other settings \(loss\.ia\)"):
        train.run(other)

    resumed = train.run(cfg)
    assert resumed["resumed_at_epoch"] == 4
    timing = {"epoch_s", "edges_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed["history"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in clean["history"]
    ]
    assert resumed["test"] == clean["test"] and resumed["best_epoch"] == clean["best_epoch"]
    assert not storage.exists(state_uri)  # finished: a new start trains from scratch


def test_resume_accepts_only_runtime_settings_changes(tmp_path):
    cfg = Config(run_root=str(tmp_path))
    saved = train.StorageCheckpoints(cfg)
    saved.save({"epoch": 3}, {})
    cfg.train.threads, cfg.train.max_epochs, cfg.train.compile, cfg.train.gpus_per_worker = 2, 900, True, 1
    assert train.StorageCheckpoints(cfg).load()["epoch"] == 3
    cfg.train.seed, cfg.model.dim = cfg.train.seed + 1, cfg.model.dim * 2
    with pytest.raises(ValueError, match=r"\(model\.dim, train\.seed\)"):
        train.StorageCheckpoints(cfg).load()

    # a state saved before a config key existed ran with that key's default
    older = Config(run_root=str(tmp_path))
    saved = train.StorageCheckpoints(older)
    del saved.config["loss"]["warmup_epochs"]
    saved.save({"epoch": 3}, {})
    assert train.StorageCheckpoints(older).load()["epoch"] == 3
    older.loss.warmup_epochs = 20
    with pytest.raises(ValueError, match=r"\(loss\.warmup_epochs\)"):
        train.StorageCheckpoints(older).load()

    # the same settings on data that changed under them (a re-ingest of edited raw files)
    same = Config(run_root=str(tmp_path))
    elsewhere = train.StorageCheckpoints(same)
    elsewhere.inputs = {"dataset": "0123456789abcdef"}
    elsewhere.save({"epoch": 3}, {})
    with pytest.raises(ValueError, match="saved on other inputs"):
        train.StorageCheckpoints(same).load()
    storage.write_bytes(elsewhere.uri, b"half a file")
    with pytest.raises(ValueError, match=r"state\.pt: not a readable training state .*train\.resume=false"):
        train.StorageCheckpoints(same).load()
