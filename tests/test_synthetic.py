import hashlib

import numpy as np
import pytest

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
    chance = np.mean(
        [
            bool(user_int[users[a]] & item_int[items[b]])
            for a, b in zip(rng.integers(len(users), size=5000), rng.integers(len(items), size=5000))
        ]
    )
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


@pytest.mark.parametrize("n_intents,lo,hi,skew", [(24, 1, 3, 0.5), (5, 1, 5, 2.0), (8, 4, 8, 1.0)])
def test_sample_sets_draw_what_generator_choice_draws(n_intents, lo, hi, skew):
    """The generator's fast set sampler gives Generator.choice's sets (collisions included: few
    intents, skewed weights, sets as large as the catalogue) and leaves the generator where the
    choice calls would."""
    w = 1.0 / np.arange(1, n_intents + 1) ** skew
    w /= w.sum()
    fast_rng, ref_rng = np.random.default_rng(11), np.random.default_rng(11)
    fast = synthetic._sample_sets(fast_rng, 3000, lo, hi, n_intents, w)
    sizes = ref_rng.integers(lo, hi + 1, size=3000)
    ref = [ref_rng.choice(n_intents, size=s, replace=False, p=w) for s in sizes]
    assert len(fast) == len(ref) and all(np.array_equal(a, b) for a, b in zip(fast, ref))
    assert fast_rng.random() == ref_rng.random()


def _fill_degrees_every_key_every_round(rng, draw, degree, n_i):
    """The plain version of synthetic._fill_degrees: every round sorts all keys."""
    n_u = len(degree)
    need = degree.copy()
    have_u, have_i = np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    for _ in range(20):
        users = np.repeat(np.arange(n_u), np.ceil(need * 1.3).astype(np.int64))
        if users.size == 0:
            break
        items = draw(users)
        keys = np.unique(np.concatenate([have_u * n_i + have_i, users * n_i + items]))
        u_all, i_all = keys // n_i, keys % n_i
        order = np.lexsort((rng.random(len(keys)), u_all))
        u_all, i_all = u_all[order], i_all[order]
        rank = np.arange(len(u_all)) - np.searchsorted(u_all, np.arange(n_u))[u_all]
        keep = rank < degree[u_all]
        have_u, have_i = u_all[keep], i_all[keep]
        need = degree - np.bincount(have_u, minlength=n_u)
        if need.max() <= 0:
            break
    return have_u, have_i


@pytest.mark.parametrize("n_u,n_i,max_deg", [(300, 50, 60), (2000, 400, 40), (50, 2000, 9)])
def test_fill_degrees_equals_sorting_every_key_every_round(n_u, n_i, max_deg):
    """Satisfied users' keys are left out of each round's sort; the result (order included,
    which the split's draws depend on) and the generator's position stay the same."""
    degree = np.random.default_rng(0).integers(3, max_deg, n_u)
    pop = np.random.default_rng(1).random(n_i) ** 3  # skewed items: many duplicate draws

    def make_draw(rng):
        return lambda users: np.searchsorted(np.cumsum(pop) / pop.sum(), rng.random(len(users))).clip(0, n_i - 1)

    fast_rng, ref_rng = np.random.default_rng(5), np.random.default_rng(5)
    got = synthetic._fill_degrees(fast_rng, make_draw(fast_rng), degree, n_i)
    want = _fill_degrees_every_key_every_round(ref_rng, make_draw(ref_rng), degree, n_i)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert fast_rng.random() == ref_rng.random()
