"""Cold start (ingest.cold_users / cold_items), user text in the generator, and the fused
score (eval.fuse_text)."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from irllrec_dist import artifacts, embed, evaluate, ingest, report, scoring, storage, train
from irllrec_dist.config import Config, ConfigError, SyntheticConfig, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic
from irllrec_dist.data.cold_start import hold_out_cold
from irllrec_dist.data.readers import InputError
from irllrec_dist.model.dual_tower import cold_vectors, fused_item_vectors


def _edges(pairs):
    return pa.table(
        {"user": pa.array([u for u, _ in pairs], pa.int64()), "item": pa.array([i for _, i in pairs], pa.int64())}
    )


def _tables():
    return {
        # user 3 and item 2 have no text: never cold; item 5 has text but no edge: never cold
        "users": pa.table(
            {"user_id": pa.array(range(5), pa.int64()), "text": pa.array(["a", "b", "c", None, "e"], pa.string())}
        ),
        "items": pa.table(
            {"item_id": pa.array(range(6), pa.int64()), "text": pa.array(["a", "b", None, "d", "e", "f"], pa.string())}
        ),
        "train": _edges([(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 0), (3, 2), (4, 1)]),
        "val": _edges([(0, 3), (1, 4), (4, 0)]),
        "test": _edges([(2, 1), (3, 0), (3, 3), (4, 4)]),
    }


def _all_edges(tables, names):
    return sorted(
        e for s in names for e in zip(tables[s].column("user").to_pylist(), tables[s].column("item").to_pylist())
    )


def test_hold_out_moves_every_edge_of_the_cold_entities_and_nothing_else():
    tables = _tables()
    out, rep = hold_out_cold(tables, users=0.5, items=0.5, seed=3)
    cold_u = set(out["cold_users"].column("user").to_pylist())
    cold_i = set(out["cold_items"].column("item").to_pylist())
    assert rep["users"]["eligible"] == 4 and rep["users"]["count"] == 2 == len(cold_u) and cold_u <= {0, 1, 2, 4}
    assert rep["items"]["eligible"] == 4 and rep["items"]["count"] == 2 and cold_i <= {0, 1, 3, 4}
    for s in ("train", "val", "test"):
        assert not cold_u & set(out[s].column("user").to_pylist())
        assert not cold_i & set(out[s].column("item").to_pylist())
    # a cold user's edge to a cold item belongs to the cold user; cold_items holds warm users only
    assert not cold_u & set(out["cold_items"].column("user").to_pylist())
    assert _all_edges(tables, ("train", "val", "test")) == _all_edges(
        out, ("train", "val", "test", "cold_users", "cold_items")
    )
    for side, name in (("users", "cold_users"), ("items", "cold_items")):
        assert rep[side]["edges"] == out[name].num_rows == sum(rep[side]["edges_from"].values())
    again, _ = hold_out_cold(tables, users=0.5, items=0.5, seed=3)
    assert again["cold_users"].equals(out["cold_users"]) and again["cold_items"].equals(out["cold_items"])
    only_items, rep_i = hold_out_cold(tables, users=0.0, items=0.5, seed=3)
    assert "cold_users" not in only_items and "users" not in rep_i
    with pytest.raises(InputError, match="selects none"):
        hold_out_cold(tables, users=0.0, items=0.1, seed=0)


def test_synthetic_user_text_names_the_users_intents_and_changes_nothing_else():
    cfg = SyntheticConfig(seed=4, n_users=60, n_items=40, n_intents=6)
    plain = synthetic.generate(cfg)
    cfg.user_text = True
    with_text = synthetic.generate(cfg)
    for name in ("train", "val", "test", "items"):
        assert with_text[name].equals(plain[name])
    users = with_text["users"].to_pylist()
    assert all(u["text"].startswith("About me: ") for u in users)
    for u in users:  # every planted intent of the user is mentioned through one of its cues
        for intent in u["intents"]:
            k = synthetic.intent_names(6).index(intent)
            assert any(cue in u["text"] for cue in synthetic._cues(k)), (u["text"], intent)


def test_fused_and_cold_vectors_by_hand():
    h = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    text_dir = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # node 2 has no text
    fused = fused_item_vectors(h, text_dir, 0.5)
    # |h_0| = 5: (3, 4) + 0.5 * 5 * (0, 1) = (3, 6.5); |h_1| = 2: (0, 2) + (1, 0); node 2 unchanged
    assert torch.allclose(fused, torch.tensor([[3.0, 6.5], [1.0, 2.0], [1.0, 0.0]]))
    cold = cold_vectors(h, text_dir, torch.tensor([True, True, False]))
    assert torch.allclose(cold, text_dir * 3.5)  # mean norm of the warm nodes: (5 + 2) / 2


def test_cold_metrics_by_hand(tmp_path):
    cfg = Config(run_root=str(tmp_path))
    cfg.eval.ks, cfg.eval.monitor_k = (1, 2), 1
    data = ds.Dataset(
        n_users=3,
        n_items=5,
        train=np.array([[0, 0], [1, 1]]),
        val=np.zeros((0, 2), np.int64),
        test=np.zeros((0, 2), np.int64),
        user_raw=["u0", "u1", "u2"],
        item_raw=list("abcde"),
        user_text=[None] * 3,
        item_text=["t"] * 5,
        cold_users=np.array([[2, 1], [2, 3]]),
        cold_items=np.array([[0, 2], [0, 4], [1, 3]]),
    )
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # warm items 0 and 1 would outrank everything; for the cold items they are not candidates
    items = torch.tensor([[9.0, 9.0], [9.0, 9.0], [1.0, 0.0], [0.5, 0.4], [0.0, 0.2]])
    m = scoring.cold_metrics(cfg, data, (users, items), (users, items))
    # cold items: user 0 ranks 2, 3, 4 with truth {2, 4}: R@1 = R@2 = 1/2; user 1 ranks 3, 4, 2, truth {3}: 1, 1
    assert m["cold_items"]["users"] == 2 and m["cold_items"]["items"] == 3
    assert m["cold_items"]["recall@1"] == pytest.approx(0.75) and m["cold_items"]["recall@2"] == pytest.approx(0.75)
    assert m["cold_items"]["ndcg@2"] == pytest.approx((1 / (1 + 1 / np.log2(3)) + 1) / 2)
    # cold user 2 ranks the whole catalogue: 0 and 1 (tied at 18), then 2, 3, 4; truth {1, 3}
    assert m["cold_users"]["users"] == 1
    assert m["cold_users"]["recall@2"] == pytest.approx(0.5)


def test_cold_start_ingest_embed_train_fused_evaluate_report(tmp_path, capsys):
    raw = tmp_path / "raw"
    synthetic.write_raw(
        synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8, user_text=True)), str(raw)
    )
    cfg = load_config(
        None,
        [
            f"run_root={tmp_path / 'root'}",
            f"ingest.source={raw}",
            "ingest.cold_users=0.1",
            "ingest.cold_items=0.2",
            "loss.prf=0.01",
            "eval.fuse_text=0.5",
            "train.max_epochs=4",
            "train.threads=1",
            "train.batch_size=256",
            "train.run_name=con-s1",
        ],
    )
    rep = ingest.run(cfg)
    data = ds.load(cfg.run_root)
    cold_users, cold_items = np.unique(data.cold_users[:, 0]), np.unique(data.cold_items[:, 1])
    assert rep["cold"]["users"]["count"] == len(cold_users) == 15
    assert rep["cold"]["items"]["count"] == 16 and len(cold_items) <= 16
    for split in (data.train, data.val, data.test):
        assert not np.isin(split[:, 0], cold_users).any() and not np.isin(split[:, 1], cold_items).any()

    embed.run(cfg)
    users = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "users"))
    ids = users.column("id").to_numpy()
    assert np.isin(cold_users, ids).all()  # cold users are embedded from their own text
    u = int(cold_users[0])
    own = embed.encode([data.user_text[u]], cfg.embed)[0]
    assert np.allclose(np.asarray(users.column("profile")[int(np.flatnonzero(ids == u)[0])].as_py()), own, atol=1e-5)

    summary = train.run(cfg)
    assert summary["cold_users"]["users"] == 15
    assert summary["cold_items"]["users"] == len(np.unique(data.cold_items[:, 0]))
    again = evaluate.run(cfg, "test", export=False)
    assert again["cold_users"] == summary["cold_users"] and again["cold_items"] == summary["cold_items"]
    assert again["recall@20"] == summary["test"]["recall@20"]
    rows = evaluate.reference_rows(cfg)
    assert {"popularity", "text_only"} == set(rows)
    assert all("cold_users" in r and "cold_items" in r for r in rows.values())
    for split in ("cold_users", "cold_items"):
        report.main([cfg.run_root, "--split", split])
        out = capsys.readouterr().out
        assert "| con | 1 |" in out and "| popularity |" in out

    # a cold table the ingest recorded is missing (a crash, a hand deletion): the dataset is not
    # committed, loading it fails loudly, and ingest writes it again
    cold_uri = storage.join(ds.dataset_uri(cfg.run_root), "cold_items")
    storage.remove(cold_uri)
    assert not ds.is_committed(cfg.run_root)
    with pytest.raises(storage.CorruptOutput, match="cold_items"):
        ds.load(cfg.run_root)
    ingest.run(cfg)
    assert np.array_equal(ds.load(cfg.run_root).cold_items, data.cold_items)

    # the same root ingested without cold start: the cold splits are no longer part of the dataset,
    # and the old embeddings (a cold user's vector, users' item means) are refused until embed re-runs
    cfg.ingest.cold_users = cfg.ingest.cold_items = 0.0
    ingest.run(cfg)
    data = ds.load(cfg.run_root)
    assert len(data.cold_users) == len(data.cold_items) == 0
    for name in ds.COLD_TABLES:
        assert storage.read_manifest(storage.join(ds.dataset_uri(cfg.run_root), name)) is None
    with pytest.raises(InputError, match="another ingest"):
        artifacts.load_text_inputs(cfg.run_root, data.n_users, data.n_items)
    embed.run(cfg)
    assert artifacts.load_text_inputs(cfg.run_root, data.n_users, data.n_items).user_has.all()


def test_fuse_text_needs_the_profile_tower():
    with pytest.raises(ConfigError, match="fuse_text"):
        load_config(None, ["eval.fuse_text=0.5"])


def test_llm_path_embeds_cold_users_from_their_own_text(tmp_path):
    from test_text_pipeline import _write_intents

    raw = tmp_path / "raw"
    synthetic.write_raw(
        synthetic.generate(SyntheticConfig(seed=6, n_users=60, n_items=40, n_intents=4, user_text=True)), str(raw)
    )
    cfg = load_config(None, [f"run_root={tmp_path / 'root'}", f"ingest.source={raw}", "ingest.cold_users=0.1"])
    ingest.run(cfg)
    data = ds.load(cfg.run_root)
    cold = np.unique(data.cold_users[:, 0])
    _write_intents(cfg.run_root, "items", [(0, "A quiet place to read.", ["reading", "quiet"])])
    embed.run(cfg)
    users = storage.read_table(artifacts.embeddings_uri(cfg.run_root, "users"))
    meta = storage.read_manifest(artifacts.embeddings_uri(cfg.run_root, "users"))["meta"]
    assert meta["text_source"] == "intents" and meta["own_text_without_training_items"] == len(cold) == 6
    ids = users.column("id").to_numpy()
    assert np.array_equal(ids, np.sort(ids)) and len(ids) == 60
    own = embed.encode([data.user_text[int(u)] for u in cold], cfg.embed)
    got = np.stack([users.column("profile")[int(np.flatnonzero(ids == u)[0])].as_py() for u in cold])
    assert np.allclose(got, own, atol=1e-5)
