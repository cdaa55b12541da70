"""Synthetic interactions with planted intents: the demo's dataset and the tests' data.

Every item carries a few latent intents; its text is review-like sentences
that mention them among noise sentences (with ``user_text``, users describe
their own intents the same way, which cold-start users need). Every user has a few intents and
interacts mostly with popular-ish items that share one of them, plus pure
popularity noise. User activity and item popularity are power-law. Output is
the raw Parquet edge-list format (``train/val/test.parquet``,
``items.parquet``, ``users.parquet``) that ``ingest`` reads, with the planted
intents kept in an ``intents`` column as ground truth. Same seed, same bytes.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from irllrec_dist import storage
from irllrec_dist.config import SyntheticConfig
from irllrec_dist.data.arrays import sorted_unique

# (intent, ways a review mentions it)
INTENTS: list[tuple[str, tuple[str, ...]]] = [
    ("quiet place to work", ("a quiet corner with fast wifi", "plenty of outlets for a laptop", "a calm room to get work done")),
    ("spicy food", ("dishes with real chili heat", "a fiery house hot sauce", "spicy noodles that made me sweat")),
    ("kid friendly", ("a play area for the kids", "a children's menu", "staff who were great with our toddler")),
    ("late night", ("a kitchen open past midnight", "food after the bars close", "late hours on weekends")),
    ("vegan options", ("a fully plant-based menu", "tasty vegan bowls", "dairy-free desserts")),
    ("craft beer", ("a long list of local IPAs", "rotating craft taps", "a brewery flight")),
    ("date night", ("candle-lit tables", "a romantic patio", "a wine list made for two")),
    ("quick lunch", ("fast counter service", "a lunch special ready in minutes", "grab-and-go sandwiches")),
    ("live music", ("a band playing on Fridays", "jazz nights", "an open mic stage")),
    ("pet friendly", ("water bowls for dogs", "a dog-friendly patio", "treats for our puppy")),
    ("brunch", ("bottomless mimosas", "eggs benedict on weekends", "a long Sunday brunch")),
    ("budget meals", ("generous plates at low prices", "cheap daily specials", "a meal under ten dollars")),
    ("fine dining", ("a tasting menu", "white tablecloth service", "a sommelier at the table")),
    ("coffee lovers", ("single-origin pour-overs", "a skilled barista", "house-roasted espresso")),
    ("sports watching", ("big screens for the game", "game-day wing deals", "a loud crowd cheering the home team")),
    ("healthy eating", ("fresh salads and grain bowls", "calorie counts on the menu", "cold-pressed juices")),
    ("seafood", ("oysters on ice", "fresh catch of the day", "a lobster roll")),
    ("desserts", ("house-made gelato", "a cake case by the door", "warm cookies after dinner")),
    ("group gatherings", ("long tables for big groups", "a private party room", "family-style platters")),
    ("outdoor seating", ("a sunny terrace", "a garden patio", "tables on the sidewalk")),
    ("authentic ethnic cuisine", ("recipes from the owner's grandmother", "regional dishes rarely seen elsewhere", "spices imported from abroad")),
    ("cocktails", ("inventive house cocktails", "a skilled mixologist", "a smoky mezcal drink")),
    ("breakfast on the go", ("breakfast burritos to go", "bagels ready at 6 am", "drive-through coffee")),
    ("accessible venue", ("a wheelchair ramp", "an accessible restroom", "wide aisles and step-free entry")),
    ("fitness", ("a well-equipped gym floor", "early morning spin classes", "personal trainers on staff")),
    ("pampering", ("a relaxing massage", "a quiet spa room", "a soothing facial")),
    ("car care", ("an honest mechanic", "a quick oil change", "a spotless car wash")),
    ("shopping", ("a wide selection of brands", "friendly shop assistants", "weekly sales")),
    ("nightlife", ("a packed dance floor", "a DJ until late", "bottle service")),
    ("gluten free", ("gluten-free bread", "a dedicated gluten-free fryer", "celiac-safe pasta")),
    ("scenic views", ("a view over the river", "a rooftop skyline view", "windows onto the mountains")),
    ("local history", ("a building from 1890", "photos of the old town on the walls", "a family business of four generations")),
]  # fmt: skip

NOISE = (
    "Parking was easy to find.",
    "Prices are about average for the area.",
    "The restrooms were clean.",
    "We came on a Tuesday.",
    "Service was a bit slow but friendly.",
    "It was busier than expected.",
    "The decor is simple.",
    "I would come back.",
    "My friend recommended it.",
    "The menu changes often.",
    "We waited about ten minutes.",
    "It is close to the station.",
    "The music was a little loud.",
    "Staff were polite.",
    "Card payments only.",
    "It has been open for a few years.",
)

TEMPLATES = (
    "Came here for {cue}, and it delivered.",
    "They have {cue}.",
    "Loved {cue}.",
    "If you want {cue}, this is the place.",
    "Highlights: {cue}.",
)

USER_TEMPLATES = ("I usually look for {cue}.", "Big fan of {cue}.", "Always happy to find {cue}.", "Hoping for {cue}.")

NAME_A = ("Copper", "Golden", "Little", "Old", "Blue", "Green", "Corner", "Urban", "Silver", "Red", "Happy", "Lucky")
NAME_B = ("Kettle", "Spoon", "Lantern", "Table", "House", "Garden", "Market", "Oak", "Harbor", "Bird", "Barrel", "Mill")


def intent_names(n: int) -> list[str]:
    names = [name for name, _ in INTENTS[:n]]
    return names + [f"theme {k}" for k in range(len(names), n)]


def _cues(k: int) -> tuple[str, ...]:
    if k < len(INTENTS):
        return INTENTS[k][1]
    return (f"the famous theme {k} corner", f"everything about theme {k}", f"a theme {k} special")


def _sample_sets(rng, n: int, lo: int, hi: int, n_intents: int, weights: np.ndarray) -> list[np.ndarray]:
    """n sets of lo..hi distinct intents drawn by ``weights``: exactly the draws of
    ``[rng.choice(n_intents, size=s, replace=False, p=weights) for s in sizes]`` (tested), without
    Generator.choice's ~40 us of checks per call, which dominated generating 50M-edge graphs.
    Like choice: draw s uniforms through the weights' CDF, keep first occurrences, and redraw the
    missing ones with the found intents' weights zeroed, until the set is full."""
    sizes = rng.integers(lo, hi + 1, size=n)
    p = np.asarray(weights, dtype=np.float64)
    if len(p) != n_intents or np.count_nonzero(p > 0) < hi or abs(p.sum() - 1) > np.sqrt(np.finfo(float).eps):
        return [rng.choice(n_intents, size=s, replace=False, p=weights) for s in sizes]  # choice's errors
    cdf0 = np.cumsum(p)
    cdf0 /= cdf0[-1]
    state = rng.bit_generator.state
    buf, used = rng.random(int(sizes.sum()) + 1024), 0

    def take(k: int) -> np.ndarray:
        nonlocal buf, used
        if used + k > len(buf):  # consecutive random() calls continue one stream
            buf = np.concatenate([buf, rng.random(len(buf))])
        used += k
        return buf[used - k : used]

    out = []
    for s in sizes.tolist():
        new = cdf0.searchsorted(take(s), side="right")
        if s == 1 or len(set(new.tolist())) == s:
            out.append(new)
            continue
        found = list(dict.fromkeys(new.tolist()))
        q = p.copy()
        while len(found) < s:
            x = take(s - len(found))
            q[found] = 0
            cdf = np.cumsum(q)
            cdf /= cdf[-1]
            found += [j for j in dict.fromkeys(cdf.searchsorted(x, side="right").tolist()) if j not in found]
        out.append(np.asarray(found, dtype=np.int64))
    rng.bit_generator.state = state  # leave the generator exactly where the choice calls would
    rng.random(used)
    return out


def _segment_cdf(members: list[np.ndarray], weight: np.ndarray):
    """Concatenated member lists with a global CDF where segment t spans [t, t+1)."""
    flat = np.concatenate(members)
    cdf = np.empty(len(flat))
    pos = 0
    for t, m in enumerate(members):
        w = weight[m]
        cdf[pos : pos + len(m)] = t + np.cumsum(w) / w.sum()
        pos += len(m)
    return flat, cdf


def _fill_degrees(rng, draw, degree: np.ndarray, n_i: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``degree[u]`` distinct items per user u: up to 20 rounds in which every user still
    short draws 1.3x what it lacks (``draw``), duplicates merge, and a user with too many keeps a
    random subset (by a random rank key per (user, item) key, drawn over ALL keys of the round).

    Returns (users, items) ordered by user, then by the last round's rank key. Each round only
    sorts the keys of users still short (the satisfied users' keys keep their positions in the
    round's key numbering), which gives the draws of sorting every key every round at a
    fraction of the cost on graphs of tens of millions of edges."""
    n_u = len(degree)
    need = degree.copy()
    have = np.array([], dtype=np.int64)  # sorted keys u * n_i + i
    last = None
    for _ in range(20):
        users = np.repeat(np.arange(n_u), np.ceil(need * 1.3).astype(np.int64))
        if users.size == 0:
            break
        items = draw(users)
        short = (need > 0)[have // n_i]
        rest = have[~short]  # satisfied users: every key stays
        act = sorted_unique(np.concatenate([have[short], users * n_i + items]))
        pos_act = np.arange(len(act)) + np.searchsorted(rest, act)  # place among all sorted keys
        rank_key = rng.random(len(rest) + len(act))
        u_act = act // n_i
        order = np.lexsort((rank_key[pos_act], u_act))
        u_sorted = u_act[order]
        rank = np.arange(len(order)) - np.searchsorted(u_sorted, u_sorted)
        kept = order[rank < degree[u_sorted]]
        last = (rest, act, pos_act, kept, rank_key)
        have = np.sort(np.concatenate([rest, act[kept]]), kind="stable")  # two sorted runs: a merge
        need = degree - np.bincount(have // n_i, minlength=n_u)
        if need.max() <= 0:
            break
    if last is None:
        return have, have
    rest, act, pos_act, kept, rank_key = last
    keys = np.concatenate([rest, act[kept]])
    ranks = np.concatenate([rank_key[np.arange(len(rest)) + np.searchsorted(act, rest)], rank_key[pos_act[kept]]])
    keys = keys[np.lexsort((ranks, keys // n_i))]
    return keys // n_i, keys % n_i


def generate(cfg: SyntheticConfig) -> dict[str, pa.Table]:
    rng = np.random.default_rng(cfg.seed)
    n_u, n_i, n_t = cfg.n_users, cfg.n_items, cfg.n_intents

    # Intents themselves are unevenly popular, as in real catalogues.
    intent_w = 1.0 / np.arange(1, n_t + 1) ** 0.5
    intent_w /= intent_w.sum()
    item_intents = _sample_sets(rng, n_i, *cfg.intents_per_item, n_t, intent_w)
    user_intents = _sample_sets(rng, n_u, *cfg.intents_per_user, n_t, intent_w)

    popularity = 1.0 / (1.0 + rng.permutation(n_i)) ** cfg.popularity_exponent
    members = [[] for _ in range(n_t)]
    for i, ints in enumerate(item_intents):
        for t in ints:
            members[t].append(i)
    members = [np.asarray(m if m else [int(rng.integers(n_i))], dtype=np.int64) for m in members]
    flat, cdf = _segment_cdf(members, popularity)
    pop_cdf = np.cumsum(popularity) / popularity.sum()

    # Power-law activity: Pareto tail above min_degree scaled to the mean.
    alpha = cfg.degree_exponent - 1.0
    tail = rng.pareto(alpha, size=n_u)
    tail *= (cfg.mean_degree - cfg.min_degree) / max(tail.mean(), 1e-9)
    degree = np.minimum(cfg.min_degree + np.round(tail).astype(np.int64), max(cfg.min_degree, n_i // 2))

    ui_len = np.array([len(x) for x in user_intents], dtype=np.int64)
    ui_ptr = np.concatenate([[0], np.cumsum(ui_len)[:-1]])
    ui_flat = np.concatenate(user_intents).astype(np.int64)

    def draw(users: np.ndarray) -> np.ndarray:
        items = np.empty(len(users), dtype=np.int64)
        noisy = rng.random(len(users)) < cfg.noise
        items[noisy] = np.searchsorted(pop_cdf, rng.random(noisy.sum()), side="right").clip(0, n_i - 1)
        idx = np.flatnonzero(~noisy)
        pick = (rng.random(len(idx)) * ui_len[users[idx]]).astype(np.int64)
        choice = ui_flat[ui_ptr[users[idx]] + pick]
        pos = np.searchsorted(cdf, choice + rng.random(len(idx)), side="right").clip(0, len(flat) - 1)
        items[idx] = flat[pos]
        return items

    have_u, have_i = _fill_degrees(rng, draw, degree, n_i)
    counts = np.bincount(have_u, minlength=n_u)
    if counts.min() < 3:
        raise RuntimeError("synthetic: could not give every user 3 distinct items; raise n_items")

    # Per-user random split: test and val get val/test_frac of each user's items (>= 1 each).
    order = np.lexsort((rng.random(len(have_u)), have_u))
    eu, ei = have_u[order], have_i[order]
    starts = np.searchsorted(eu, np.arange(n_u))
    rank = np.arange(len(eu)) - starts[eu]
    n_test = np.maximum(1, np.round(counts * cfg.test_frac)).astype(np.int64)
    n_val = np.maximum(1, np.round(counts * cfg.val_frac)).astype(np.int64)
    split = np.where(rank[:] < n_test[eu], 2, np.where(rank < n_test[eu] + n_val[eu], 1, 0))

    uid = np.asarray([f"u{u:07d}" for u in range(n_u)], dtype=object)
    iid = np.asarray([f"i{i:07d}" for i in range(n_i)], dtype=object)
    names = intent_names(n_t)
    out: dict[str, pa.Table] = {}
    for s, name in enumerate(("train", "val", "test")):
        m = split == s
        o = np.lexsort((ei[m], eu[m]))
        out[name] = pa.table(
            {"user": pa.array(uid[eu[m][o]], pa.string()), "item": pa.array(iid[ei[m][o]], pa.string())}
        )

    texts = [_item_text(rng, i, item_intents[i]) if cfg.with_text else None for i in range(n_i)]
    out["items"] = pa.table(
        {
            "item": pa.array(iid, pa.string()),
            "text": pa.array(texts, pa.string()),
            "intents": pa.array([[names[t] for t in sorted(ints)] for ints in item_intents], pa.list_(pa.string())),
        }
    )
    # Own stream: switching user text on leaves every other output byte-identical.
    urng = np.random.default_rng([cfg.seed, 1])
    user_texts = [_user_text(urng, user_intents[u]) if cfg.user_text else None for u in range(n_u)]
    out["users"] = pa.table(
        {
            "user": pa.array(uid, pa.string()),
            "text": pa.array(user_texts, pa.string()),
            "intents": pa.array([[names[t] for t in sorted(ints)] for ints in user_intents], pa.list_(pa.string())),
        }
    )
    return out


def _mentions(rng, intents: np.ndarray, templates: tuple[str, ...], max_noise: int) -> list[str]:
    """One templated sentence per intent (a random cue of it), then 1..max_noise noise sentences."""
    sentences = []
    for t in intents:
        cues = _cues(int(t))
        sentences.append(templates[rng.integers(len(templates))].format(cue=cues[rng.integers(len(cues))]))
    return sentences + [
        NOISE[k] for k in rng.choice(len(NOISE), size=int(rng.integers(1, max_noise + 1)), replace=False)
    ]


def _item_text(rng, i: int, intents: np.ndarray) -> str:
    name = f"The {NAME_A[rng.integers(len(NAME_A))]} {NAME_B[rng.integers(len(NAME_B))]}"
    sentences = _mentions(rng, intents, TEMPLATES, max_noise=3)
    rng.shuffle(sentences)
    return f"{name}. " + " ".join(sentences)


def _user_text(rng, intents: np.ndarray) -> str:
    """A user's self-description: one sentence per planted intent among one or two noise sentences."""
    sentences = _mentions(rng, intents, USER_TEMPLATES, max_noise=2)
    rng.shuffle(sentences)
    return "About me: " + " ".join(sentences)


def write_raw(tables: dict[str, pa.Table], out_uri: str) -> None:
    """Write the raw files; the raw folder is an input, not a stage output (no manifest)."""
    for name, table in tables.items():
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(storage.join(out_uri, f"{name}.parquet"), buf.getvalue())
