"""`report --plot DIR` (issue 21, Build 6): PNGs drawn from runs' metrics.json, opened here."""

import json

import matplotlib.image
import numpy as np
import pytest

from irllrec_dist import plots, report


def _history(epochs, eval_every, start, slope, seed, text=False):
    out = []
    for e in range(epochs):
        rec = {
            "epoch": e,
            "loss": 0.7 - 0.01 * e + 0.001 * seed,
            "bpr": 0.69 - 0.01 * e,
            "reg": 100.0 + e,
            "epoch_s": 1.0,
            "edges_per_s": 1e4,
            "allreduce_bytes_per_step": 0,
            "table_rows_bytes_per_step": 0,
        }
        if text:
            rec.update(prf=10.0 - 0.2 * e, ia=9.0 - 0.2 * e)
        if e % eval_every == 0:
            for k in (10, 20):
                rec[f"val_recall@{k}"] = start + slope * e + 0.002 * seed
        out.append(rec)
    return out


def _metrics(name, seed, epochs, text=False, history=True):
    by_degree = {
        b: {"users": u, "recall@20": 0.1 + 0.01 * i + 0.001 * (seed or 0), "ndcg@20": 0.05}
        for i, (b, u) in enumerate((("1-5", 300), ("6-20", 200), (">20", 40)))
    }
    m = {
        "run_name": name,
        "seed": seed,
        "best_epoch": epochs - 1 if history else None,
        "test": {"recall@10": 0.1, "recall@20": 0.15, "ndcg@10": 0.05, "ndcg@20": 0.06, "users": 540},
        "test_by_degree": by_degree,
    }
    if history:
        m["history"] = _history(epochs, 2, 0.05, 0.004, seed, text)
    return m


@pytest.fixture
def run_root(tmp_path):
    runs = {
        "lightgcn-s1": _metrics("lightgcn-s1", 1, 30),
        "lightgcn-s2": _metrics("lightgcn-s2", 2, 24),
        "irllrec-s1": _metrics("irllrec-s1", 1, 20, text=True),
        "popularity": _metrics("popularity", None, 0, history=False),
    }
    for name, m in runs.items():
        (tmp_path / "root" / "runs" / name).mkdir(parents=True)
        (tmp_path / "root" / "runs" / name / "metrics.json").write_text(json.dumps(m))
    return tmp_path / "root"


def _open(path) -> np.ndarray:
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05, f"{path} looks blank"
    return img


def test_report_plot_writes_the_three_pictures(run_root, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert report.main([str(run_root), "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| lightgcn | 2 |" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["degree_recall20.png", "losses.png", "val_recall20.png"]
    for name in names:
        assert f"wrote {out / name}" in printed
    h, w = _open(out / "val_recall20.png").shape[:2]
    assert (w, h) == (900, 552)  # 7.5 x 4.6 in at 120 dpi
    h, w = _open(out / "losses.png").shape[:2]
    assert w == 1512 and h > 700  # three panels a row: loss, bpr, reg / prf, ia
    h, w = _open(out / "degree_recall20.png").shape[:2]
    assert w >= 720 and h == 552


def test_seeds_are_one_line_with_a_band(run_root):
    groups = report.collect(str(run_root))
    epochs, mean, low, high, seeds = plots.by_epoch(groups["lightgcn"], "val_recall@20")
    assert seeds == 2 and list(epochs) == list(range(0, 30, 2))
    at = {int(e): (m, lo, hi) for e, m, lo, hi in zip(epochs, mean, low, high)}
    assert at[4] == pytest.approx((0.05 + 0.016 + 0.003, 0.05 + 0.016 + 0.002, 0.05 + 0.016 + 0.004))
    assert at[26][1] == at[26][2]  # seed 2 stopped at epoch 23: one seed left, no band
    assert plots.by_epoch(groups["popularity"], "val_recall@20")[4] == 0
    assert plots.loss_terms(groups) == ["loss", "bpr", "reg", "prf", "ia"]
    fig = plots.validation_figure(groups)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["irllrec (1 seed)", "lightgcn (2 seeds)"]  # the reference row has no curve
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_ylabel() == "validation Recall@20"
    bars = plots.degree_figure(groups).axes[0]
    assert bars.get_legend_handles_labels()[1] == ["irllrec (1 seed)", "lightgcn (2 seeds)", "popularity (1 seed)"]
    assert bars.get_ylabel() == "test Recall@20"


def test_one_runs_curves(tmp_path):
    fig = plots.run_curves_figure(_metrics("irllrec-s1", 1, 20, text=True))
    (tmp_path / "curves.png").write_bytes(plots.png(fig))
    h, w = _open(tmp_path / "curves.png").shape[:2]
    assert (w, h) == (1500, 504)  # 12.5 x 4.2 in at 120 dpi
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == "epoch"
    assert "best epoch (19)" in left.get_legend_handles_labels()[1]
    assert right.get_yscale() == "log"


def test_nothing_to_draw_is_one_line(tmp_path, capsys):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "metrics.json").write_text(
        json.dumps({"run_name": "x", "test": {"recall@10": 0.1, "recall@20": 0.2, "ndcg@10": 0.1, "ndcg@20": 0.1}})
    )
    assert report.main([str(tmp_path), "--plot", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["report: nothing to draw: no run's metrics.json holds a history or test_by_degree"]
