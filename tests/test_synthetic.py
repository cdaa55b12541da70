import hashlib

import numpy as np

from irllrec_dist.config import SyntheticConfig
from irllrec_dist.data import synthetic


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes(tmp_path):
    cfg = SyntheticConfig(seed=11, n_users=300, n_items=200, n_intents=10)
    synthetic.write_raw(synthetic.generate(cfg), str(tmp_path / "a"))
    synthetic.write_raw(synthetic.generate(cfg), str(tmp_path / "b"))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    cfg.seed = 12
    synthetic.write_raw(synthetic.generate(cfg), str(tmp_path / "c"))
    assert _digest(tmp_path / "a")["train.parquet"] != _digest(tmp_path / "c")["train.parquet"]


def test_planted_structure():
    cfg = SyntheticConfig(seed=1, n_users=1000, n_items=800, n_intents=16, noise=0.15)
    t = synthetic.generate(cfg)
    item_int = {r["item"]: set(r["intents"]) for r in t["items"].to_pylist()}
    user_int = {r["user"]: set(r["intents"]) for r in t["users"].to_pylist()}
    train = t["train"].to_pylist()
    share = np.mean([bool(user_int[e["user"]] & item_int[e["item"]]) for e in train])
    # chance: a random (user, item) pair shares an intent
    rng = np.random.default_rng(0)
    users, items = list(user_int), list(item_int)
    chance = np.mean([bool(user_int[users[a]] & item_int[items[b]])
                      for a, b in zip(rng.integers(len(users), size=5000), rng.integers(len(items), size=5000))])
    assert share > 0.8 and share > 2.5 * chance, (share, chance)
    # item text mentions a cue of every planted intent
    for row in t["items"].to_pylist()[:50]:
        for name in row["intents"]:
            k = synthetic.intent_names(cfg.n_intents).index(name)
            assert any(cue in row["text"] for cue in synthetic._cues(k))
    # power-law activity: the busiest users have far more than the median
    deg = np.bincount([int(e["user"][1:]) for e in train])
    assert deg.max() > 4 * np.median(deg) and deg.min() >= 1
    # every user has >= 1 val and >= 1 test item
    for split in ("val", "test"):
        assert len(set(t[split].column("user").to_pylist())) == cfg.n_users
