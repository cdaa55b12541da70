"""The benchmarks run end to end on a tiny graph and save what they print (no timing asserted)."""

import json

from irllrec_dist import bench


def test_bench_train_one_and_two_workers(tmp_path, capsys):
    out = tmp_path / "train.json"
    bench.main(
        [
            "train",
            "--sizes",
            "tiny",
            "--workers",
            "1,2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--graph-cache",
            str(tmp_path / "graphs"),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "edges/s/worker" in printed and "all-reduced B/step" in printed and "vs dense" in printed
    report = json.loads(out.read_text())
    rows = {(r["workers"], r["tables"]): r for r in report["results"]}
    assert set(rows) == {(1, "dense"), (1, "sparse"), (2, "dense"), (2, "sparse")}
    assert len({r["n_edges"] for r in rows.values()}) == 1 and rows[1, "dense"]["n_edges"] > 10_000
    assert rows[1, "dense"]["allreduce_bytes_per_step"] == 0  # a single worker exchanges nothing
    assert rows[1, "dense"]["speed_vs_dense_tables"] == 1.0 and rows[2, "sparse"]["speed_vs_dense_tables"] > 0
    for kind in ("dense", "sparse"):
        two = rows[2, kind]
        assert two["table_rows_bytes_per_step"] > 0 and two["dense_tables_bytes_per_step"] > 0
        assert all(r["edges_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in two["ranks"])


def test_bench_sampler_saves_json(tmp_path, capsys):
    out = tmp_path / "sampler.json"
    bench.main(
        [
            "sampler",
            "--size",
            "tiny",
            "--batches",
            "3",
            "--warmup",
            "1",
            "--max-seconds",
            "5",
            "--graph-cache",
            str(tmp_path / "graphs"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert "batches/s" in capsys.readouterr().out
    report = json.loads(out.read_text())
    ours, keyed = report["results"]
    assert ours["backend"] == "torch (ours)" and keyed["backend"] == "torch (ours, counter-based)"
    assert ours["batches_per_s"] > 0 and keyed["batches_per_s"] > 0
    assert ours["edges_per_batch"] > 0 and keyed["edges_per_batch"] > 0


def test_bench_step_times_the_real_step_on_an_ingested_dataset(tmp_path, capsys, tiny_raw):
    from irllrec_dist import ingest
    from irllrec_dist.config import load_config

    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"run_root: {tmp_path / 'root'}\ningest:\n  format: parquet\n  source: {tiny_raw}\n")
    ingest.run(load_config([str(preset)]))
    out = tmp_path / "step.json"
    bench.main(
        [
            "step",
            "--config",
            str(preset),
            "--presets",
            "lightgcn",
            "--compile",
            "off",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--profile",
            "--out",
            str(out),
            "train.batch_size=512",
        ]
    )
    assert "ms/step" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["results"]
    assert row["preset"] == "lightgcn" and row["speedup_vs_eager"] == 1.0 and row["ms_per_step"] > 0
    assert row["s_per_epoch"] > row["ms_per_step"] / 1e3  # the tiny train split is several batches of 512
    assert row["profile"] and all(op["calls_per_step"] > 0 for op in row["profile"])
