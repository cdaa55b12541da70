"""Pictures of runs, drawn from their ``metrics.json`` (matplotlib: the ``plot`` extra).

    irllrec report runs/yelp --plot docs/results/yelp        # or python -m irllrec_dist.report ...

writes three PNGs into the folder (local or s3://):

- ``val_recall20.png``: validation Recall@20 by epoch, one line per preset (runs named
  ``<preset>-s<seed>`` are one preset), the mean over its seeds with a band from the lowest to the
  highest seed;
- ``losses.png``: each loss term by epoch (unweighted, as training logs them; ``loss`` is the
  weighted sum that is minimised), one panel per term, the same lines and bands;
- ``degree_recall20.png``: test Recall@20 by user training degree (``eval.degree_buckets``), one
  bar per preset and bucket, the whisker spanning the seeds.

``train`` draws one run's ``curves.png`` (validation Recall@K and the loss terms by epoch) into
its run folder at the end, when matplotlib can be imported.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot: no
display, no global backend switch in a process that imports this module.
"""

from __future__ import annotations

import io
import math

import numpy as np

from irllrec_dist import storage
from irllrec_dist.cli import StageError

# Numbers in a history record that are not loss terms.
NOT_TERMS = frozenset({"epoch", "epoch_s", "edges_per_s", "allreduce_bytes_per_step", "table_rows_bytes_per_step"})
TERM_TITLES = {
    "loss": "loss (weighted sum)",
    "bpr": "bpr",
    "reg": "reg (L2)",
    "prf": "prf (profile InfoNCE)",
    "ia": "ia (intent alignment)",
    "ta": "ta (translation alignment)",
    "itm": "itm (interaction-text matching)",
}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> None:
    if not available():
        raise StageError("drawing needs matplotlib: pip install 'irllrec-dist[plot]' (or .[plot] in a checkout)")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def metric_label(metric: str) -> str:
    """recall@20 -> Recall@20, ndcg@10 -> NDCG@10."""
    name, _, k = metric.partition("@")
    return {"recall": "Recall", "ndcg": "NDCG"}.get(name, name) + (f"@{k}" if k else "")


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def by_epoch(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(epochs, mean, low, high, seeds) of ``key`` in the runs' histories: at each epoch over the
    seeds that logged it there (a seed that stopped early leaves the later epochs to the others)."""
    values: dict[int, list[float]] = {}
    seeds = 0
    for r in runs:
        points = [
            (rec["epoch"], rec[key])
            for rec in r.get("history", [])
            if key in rec and isinstance(rec[key], (int, float)) and math.isfinite(rec[key])
        ]
        seeds += bool(points)
        for epoch, v in points:
            values.setdefault(int(epoch), []).append(float(v))
    epochs = np.array(sorted(values), dtype=np.int64)
    stack = [values[e] for e in epochs]
    return (
        epochs,
        np.array([np.mean(v) for v in stack]),
        np.array([min(v) for v in stack]),
        np.array([max(v) for v in stack]),
        seeds,
    )


def _line(ax, epochs, mean, low, high, color, label, marker=True) -> None:
    ax.plot(
        epochs,
        mean,
        color=color,
        label=label,
        marker="o" if marker and len(epochs) <= 40 else None,
        markersize=3,
        linewidth=1.6,
    )
    if np.any(high > low):
        ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def loss_terms(groups: dict[str, list[dict]]) -> list[str]:
    """The loss terms the runs' histories hold, ``loss`` first, then in the order training adds them."""
    found: set[str] = set()
    for runs in groups.values():
        for r in runs:
            for rec in r.get("history", []):
                found |= {
                    k
                    for k, v in rec.items()
                    if k not in NOT_TERMS and not k.startswith("val_") and isinstance(v, (int, float))
                }
    order = list(TERM_TITLES)
    return sorted(found, key=lambda t: (order.index(t) if t in order else len(order), t))


def validation_figure(groups: dict[str, list[dict]], metric: str = "recall@20"):
    key = f"val_{metric}"
    drawn = {g: runs for g, runs in groups.items() if by_epoch(runs, key)[4]}
    if not drawn:
        return None
    colors = _colors(list(drawn))
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    for g, runs in drawn.items():
        epochs, mean, low, high, n = by_epoch(runs, key)
        _line(ax, epochs, mean, low, high, colors[g], f"{g} ({_seeds(n)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_label(metric)}")
    ax.set_title(
        f"Validation {metric_label(metric)} by epoch (line: mean over seeds; band: min to max)", fontsize="medium"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return fig


def loss_figure(groups: dict[str, list[dict]]):
    terms = loss_terms(groups)
    drawn = {g: runs for g, runs in groups.items() if any(r.get("history") for r in runs)}
    if not terms or not drawn:
        return None
    colors = _colors(list(drawn))
    cols = min(3, len(terms))
    rows = -(-len(terms) // cols)
    fig = _figure(4.2 * cols, 3.1 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for g, runs in drawn.items():
            epochs, mean, low, high, n = by_epoch(runs, term)
            if n:
                _line(ax, epochs, mean, low, high, colors[g], f"{g} ({_seeds(n)})", marker=False)
        ax.set_title(TERM_TITLES.get(term, term), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean loss per step")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(terms) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # a preset without the first panel's term still gets into the legend
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize="small")
    fig.suptitle("Loss terms by epoch (unweighted; mean over seeds, band: min to max)", fontsize="medium")
    return fig


def degree_figure(groups: dict[str, list[dict]], metric: str = "recall@20"):
    drawn = {g: [r for r in runs if r.get("test_by_degree")] for g, runs in groups.items()}
    drawn = {g: runs for g, runs in drawn.items() if runs}
    if not drawn:
        return None
    first = next(iter(drawn.values()))[0]["test_by_degree"]
    buckets = [b for b in first if metric in first[b]]
    if not buckets:
        return None
    colors = _colors(list(drawn))
    fig = _figure(max(6.0, 1.2 + 0.45 * len(drawn) * len(buckets)), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / len(drawn)
    x = np.arange(len(buckets))
    for j, (g, runs) in enumerate(drawn.items()):
        vals = [[r["test_by_degree"][b][metric] for r in runs if b in r["test_by_degree"]] for b in buckets]
        mean = np.array([np.mean(v) if v else np.nan for v in vals])
        low = np.array([min(v) if v else np.nan for v in vals])
        high = np.array([max(v) if v else np.nan for v in vals])
        yerr = np.vstack([mean - low, high - mean]) if len(runs) > 1 else None
        ax.bar(
            x - 0.4 + width * (j + 0.5),
            mean,
            width,
            yerr=yerr,
            capsize=3,
            color=colors[g],
            label=f"{g} ({_seeds(len(runs))})",
        )
    users = [first[b].get("users") for b in buckets]
    ax.set_xticks(x, [f"{b}\n({u} users)" if u is not None else b for b, u in zip(buckets, users)])
    ax.set_xlabel("user's training degree (interactions)")
    ax.set_ylabel(f"test {metric_label(metric)}")
    # two lines: on one the title is wider than a figure of few bars and is cut off
    ax.set_title(
        f"Test {metric_label(metric)} by user degree\n(bar: mean over seeds; whisker: min to max)", fontsize="medium"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _file_metric(metric: str) -> str:
    return metric.replace("@", "")


def plot_runs(groups: dict[str, list[dict]], out_dir: str, metric: str = "recall@20") -> list[str]:
    """Draw the three figures of ``groups`` (``report.collect``) into ``out_dir``; -> the files written."""
    _require()
    written = []
    for name, fig in (
        (f"val_{_file_metric(metric)}.png", validation_figure(groups, metric)),
        ("losses.png", loss_figure(groups)),
        (f"degree_{_file_metric(metric)}.png", degree_figure(groups, metric)),
    ):
        if fig is None:
            continue
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, png(fig))
        written.append(uri)
    if not written:
        raise StageError("nothing to draw: no run's metrics.json holds a history or test_by_degree")
    return written


def run_curves_figure(summary: dict, monitor: str = "recall@20"):
    """One run: validation Recall@K by epoch (the best epoch marked), and its loss terms (log scale)."""
    history = summary.get("history") or []
    if not history:
        return None
    fig = _figure(12.5, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.1))
    keys = sorted(
        {k for rec in history for k in rec if k.startswith("val_recall@")}, key=lambda k: int(k.split("@")[1])
    )
    colors = _colors(keys)
    for key in keys:
        pts = [(rec["epoch"], rec[key]) for rec in history if key in rec]
        e, v = zip(*pts)
        left.plot(
            e,
            v,
            marker="o" if len(e) <= 40 else None,
            markersize=3,
            color=colors[key],
            linewidth=2.0 if key == f"val_{monitor}" else 1.2,
            label=metric_label(key[4:]),
        )
    best = summary.get("best_epoch")
    if best is not None:
        left.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best})")
    left.set_xlabel("epoch")
    left.set_ylabel("validation recall")
    left.set_title(f"{summary.get('run_name', 'run')}: validation recall by epoch", fontsize="medium")
    left.grid(True, alpha=0.3)
    if keys or best is not None:
        left.legend(fontsize="small", loc="lower right")
    terms = loss_terms({"run": [summary]})
    positive = all(rec.get(t, 1.0) > 0 for rec in history for t in terms)
    tcolors = _colors(terms)
    for t in terms:
        pts = [(rec["epoch"], rec[t]) for rec in history if t in rec]
        if pts:
            e, v = zip(*pts)
            # the weighted sum in black and wider, so that a term it equals (bpr) shows on top of it
            right.plot(
                e,
                v,
                color="black" if t == "loss" else tcolors[t],
                linewidth=2.4 if t == "loss" else 1.3,
                linestyle="--" if t == "reg" else "-",
                label=TERM_TITLES.get(t, t),
                zorder=1 if t == "loss" else 2,
            )
    if positive:
        right.set_yscale("log")
    right.set_xlabel("epoch")
    right.set_ylabel("mean loss per step" + (" (log scale)" if positive else ""))
    right.set_title("loss terms by epoch (unweighted; loss = weighted sum)", fontsize="medium")
    right.grid(True, alpha=0.3)
    right.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig
