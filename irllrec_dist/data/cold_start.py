"""Cold start: hold out users or items that have text, with every interaction they have.

A share of the users (``ingest.cold_users``) and of the items
(``ingest.cold_items``) that have text and at least one interaction is drawn
with ``seed``. Every edge of a cold user moves to ``cold_users``; every other
edge of a cold item moves to ``cold_items``. Training and the warm evaluation
never see them; evaluate ranks the whole catalogue for cold users and only the
cold items for the warm users who interacted with them, reaching cold entities
through their text alone (evaluate.cold_metrics).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from irllrec_dist.data.readers import SPLITS, InputError


def _draw(table: pa.Table, seen: np.ndarray, fraction: float, side: str, rng) -> tuple[np.ndarray, dict]:
    has_text = ~pc.is_null(table.column("text")).to_numpy(zero_copy_only=False)
    eligible = np.flatnonzero(has_text & seen)
    n_cold = int(round(fraction * len(eligible)))
    if n_cold == 0:
        raise InputError(
            f"ingest.cold_{side}s={fraction} of the {len(eligible)} {side}s with text and "
            f"interactions selects none; expected at least one (do the {side}s have text?)"
        )
    cold = np.zeros(table.num_rows, dtype=bool)
    cold[rng.choice(eligible, n_cold, replace=False)] = True
    return cold, {"fraction": fraction, "count": n_cold, "eligible": int(len(eligible))}


def hold_out_cold(
    tables: dict[str, pa.Table], users: float, items: float, seed: int
) -> tuple[dict[str, pa.Table], dict]:
    """-> (tables with ``cold_users`` / ``cold_items`` edge tables for the non-zero shares and
    their edges removed from train/val/test, report)."""
    for side, fraction in (("users", users), ("items", items)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"cold-start share of {side} must be in [0, 1), got {fraction}")
    seen_u = np.zeros(tables["users"].num_rows, dtype=bool)
    seen_i = np.zeros(tables["items"].num_rows, dtype=bool)
    for s in SPLITS:
        seen_u[tables[s].column("user").to_numpy()] = True
        seen_i[tables[s].column("item").to_numpy()] = True
    cold_u, cold_i, report = np.zeros_like(seen_u), np.zeros_like(seen_i), {"seed": seed}
    if users:
        cold_u, report["users"] = _draw(tables["users"], seen_u, users, "user", np.random.default_rng([seed, 0]))
    if items:  # its own stream: the cold items do not depend on whether users are held out
        cold_i, report["items"] = _draw(tables["items"], seen_i, items, "item", np.random.default_rng([seed, 1]))
    out = dict(tables)
    parts: dict[str, list[pa.Table]] = {"cold_users": [], "cold_items": []}
    for s in SPLITS:
        t = tables[s]
        by_user = cold_u[t.column("user").to_numpy()]
        by_item = cold_i[t.column("item").to_numpy()] & ~by_user
        parts["cold_users"].append(t.filter(pa.array(by_user)))
        parts["cold_items"].append(t.filter(pa.array(by_item)))
        out[s] = t.filter(pa.array(~(by_user | by_item)))
    for name, side in (("cold_users", "users"), ("cold_items", "items")):
        if side in report:
            out[name] = pa.concat_tables(parts[name])
            report[side]["edges"] = int(out[name].num_rows)
            report[side]["edges_from"] = {s: int(p.num_rows) for s, p in zip(SPLITS, parts[name])}
    return out, report
