"""What every benchmark shares: the printed table and the saved JSON report."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time


def save_report(report: dict, path: str) -> dict:
    """The report plus host and time, written as JSON to ``path``."""
    import torch

    report = {
        **report,
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return report


# The heading and format of every column a benchmark table prints, by the row key it shows.
HEADINGS = {
    "graph": ("graph", "s"), "n_edges": ("edges", ",d"), "workers": ("workers", "d"), "tables": ("tables", "s"),
    "preset": ("preset", "s"), "compile": ("compile", "s"), "backend": ("backend", "s"), "n": ("items", "d"),
    "batches_per_s": ("batches/s", ".2f"), "seeds_per_s": ("seeds/s", ",.0f"),
    "edges_per_s": ("sampled edges/s", ",.0f"), "edges_per_batch": ("edges/batch", ",.0f"),
    "input_nodes_per_batch": ("input nodes/batch", ",.0f"), "peak_rss_mib": ("peak RSS MiB", ",.0f"),
    "ms_per_step": ("ms/step", ".1f"), "s_per_epoch": ("s/epoch", ".2f"), "speedup_vs_eager": ("vs eager", ".2f"),
    "warmup_s": ("warm-up s", ".1f"), "ops_per_step": ("ops/step", ",.0f"),
    "launches_per_step": ("launches/step", ".0f"), "peak_device_mib": ("peak device MiB", ",.0f"),
    "edges_per_s_per_worker": ("edges/s/worker", ",.0f"), "speed_vs_dense_tables": ("vs dense", ".2f"),
    "edges_per_s_total": ("edges/s total", ",.0f"), "allreduce_bytes_per_step": ("all-reduced B/step", ",.0f"),
    "dense_tables_bytes_per_step": ("dense tables B/step", ",.0f"),
    "allreduced_over_dense_tables": ("vs dense tables", ".2f"), "peak_rss_mib_per_worker": ("peak MiB/worker", ",.0f"),
    "parse_success_rate_first": ("parsed 1st try", ".0%"), "parse_success_rate": ("parsed final", ".0%"),
    "tokens_per_s": ("tokens/s", ".1f"), "entities_per_s": ("entities/s", ".3f"),
    "output_tokens": ("out tokens", ",d"), "gen_s": ("generate s", ".1f"), "load_s": ("load s", ".1f"),
}  # fmt: skip


def fmt_table(rows: list[dict], cols: list[str | tuple[str, str, str]]) -> str:
    """``rows`` as a right-aligned text table. ``cols``: row keys (headed as in HEADINGS) or
    (key, heading, format spec) tuples; None prints as -."""
    cols = [(c, *HEADINGS[c]) if isinstance(c, str) else c for c in cols]
    head = [c[1] for c in cols]
    body = [[format(r[c[0]], c[2]) if r.get(c[0]) is not None else "-" for c in cols] for r in rows]
    widths = [max(len(h), *(len(b[k]) for b in body)) for k, h in enumerate(head)]

    def line(xs: list[str]) -> str:
        return "  ".join(x.rjust(w) for x, w in zip(xs, widths))

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def print_table(title: str, rows: list[dict], cols: list[str | tuple[str, str, str]]) -> None:
    """A blank line, the title (unless empty) and the table."""
    print()
    if title:
        print(title)
    print(fmt_table(rows, cols))
