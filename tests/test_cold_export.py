"""Cold-start users' exported recommendations come from the vectors their metrics use (issue 21,
Build 7): the text tower's (Scorer.cold_user) against the catalogue a cold user ranks
(Scorer.catalogue), not their never-trained ID vectors."""

import numpy as np
import torch

from irllrec_dist import artifacts, embed, ingest, scoring, storage, train
from irllrec_dist.config import Config, SyntheticConfig, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic


def _exported(cfg) -> dict[int, tuple[list[int], list[float]]]:
    rows = storage.read_table(artifacts.run_uri(cfg, "recommendations")).to_pylist()
    return {r["user_id"]: (r["item_ids"], r["scores"]) for r in rows}


def _top(vec: torch.Tensor, items: torch.Tensor, k: int, exclude=()) -> list[int]:
    scores = items @ vec
    scores[list(exclude)] = -torch.inf
    return torch.topk(scores, k).indices.tolist()


def test_export_by_hand(tmp_path):
    cfg = Config(run_root=str(tmp_path))
    cfg.eval.export_top_k = 2
    # users 0, 1 trained; user 2 cold (no training edge); item 3 cold
    data = ds.Dataset(
        n_users=3,
        n_items=4,
        train=np.array([[0, 0], [1, 1]]),
        val=np.zeros((0, 2), np.int64),
        test=np.zeros((0, 2), np.int64),
        user_raw=["u0", "u1", "u2"],
        item_raw=list("abcd"),
        user_text=[None] * 3,
        item_text=["t"] * 4,
        cold_users=np.array([[2, 2]]),
        cold_items=np.array([[0, 3]]),
    )
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])  # user 2's ID vector: never trained
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, -1.0]])  # item 3: an untrained ID vector
    cold_user = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.2]])  # user 2 through its text
    cold_item = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [-3.0, 0.0]])
    scorer = scoring.Scorer(
        user, item, cold_user, cold_item, torch.tensor([True, True, True, False]), torch.tensor([True, True, False])
    )
    assert list(scorer.cold_users()) == [2]
    scoring.export_top_k(cfg, data, scorer)
    got = _exported(cfg)
    # the cold user ranks the catalogue (item 3 by its text vector: score 3.0 first) with its text vector
    assert got[2][0] == _top(cold_user[2], scorer.catalogue(), 2) == [3, 1]
    assert np.allclose(got[2][1], [3.0, 0.2])
    assert got[2][0] != _top(user[2], item, 2)  # what the ID vector would have recommended
    # warm users: their trained vectors against the trained item vectors, training items ranked out
    assert got[0][0] == _top(user[0], item, 2, exclude=[0]) == [2, 1]
    assert got[1][0] == _top(user[1], item, 2, exclude=[1]) == [2, 0]


def test_trained_run_exports_cold_users_from_their_text_vectors(tmp_path):
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
            "train.max_epochs=2",
            "train.threads=1",
            "train.batch_size=256",
            "train.run_name=con",
            "eval.export_top_k=10",
        ],
    )
    ingest.run(cfg)
    embed.run(cfg)
    summary = train.run(cfg)  # its test evaluation writes the export
    data = ds.load(cfg.run_root)
    cold = np.unique(data.cold_users[:, 0])
    assert summary["cold_users"]["users"] == len(cold) == 15

    scorer, _ = scoring.load_scorer(cfg, data)
    assert set(scorer.cold_users()) == set(cold.tolist())
    got = _exported(cfg)
    catalogue = scorer.catalogue()
    differs = 0
    for u in cold.tolist():
        want = _top(scorer.cold_user[u], catalogue, 10)
        assert got[u][0] == want, u
        assert np.allclose(got[u][1], (catalogue @ scorer.cold_user[u])[want].numpy(), atol=1e-5)
        differs += got[u][0] != _top(scorer.user[u], scorer.item, 10)
    assert differs > 0  # the ID vectors would have recommended other items
    train_items = data.matrix("train")
    for u in (0, 1, 2):  # warm users are unchanged: trained vectors, training items ranked out
        if u in set(cold.tolist()):
            continue
        assert got[u][0] == _top(scorer.user[u], scorer.item, 10, exclude=train_items[u].indices.tolist())
