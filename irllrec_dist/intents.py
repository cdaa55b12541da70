"""Stage: LLM intent generation — a profile and a list of intents for every item and user.

    python -m irllrec_dist.intents --config configs/yelp.yaml intents.backend=vllm intents.batch_size=256

Reads the canonical dataset; writes ``<run_root>/intents/items`` and
``<run_root>/intents/users``. Prompts are the chain-of-thought templates in
``configs/prompts/`` (see :mod:`irllrec_dist.llm.prompts`): an item is
described by its own text, a user by at most ``intents.user_max_items`` of the
items they interacted with in the *training* split (seeded choice; val/test
never used). Entities without text (items with no text, users none of whose
training items has text) get no row and are counted in the report.

Output layout (each folder a manifest-committed output of :mod:`irllrec_dist.storage`)::

    intents/items/chunk-00000/_manifest.json   # one per chunk of chunk_size entities (in id order)
    intents/items/_manifest.json               # written last: lists every chunk's shards

Each chunk's config hash covers the entity ids in the chunk, the dataset, the
model, the prompt hash and every setting that changes what is generated
(not batch size, device, threads or backend): a rerun skips committed chunks,
a run killed midway redoes only the chunks it had not committed, and the side
manifest, written when every chunk is done, makes ``intents/<side>`` readable
with ``storage.read_table`` — each entity exactly once. A side manifest whose
hash no longer matches is deleted before regeneration starts, so a reader never
sees a mix.

Columns: id int64, profile string, intents list<string>, raw_output string
(the generation the row was taken from), status string (ok / repaired /
failed: the parser's verdict on that generation), attempts int32 (generations
made for the entity), fallback bool, model string, prompt_hash string,
n_output_tokens int32 (output tokens over all attempts).

Retries and fallback: a generation the parser marks ``failed`` is asked again,
up to ``intents.max_retries`` more times, with ``intents.retry_temperature``
and a new seed (a greedy re-ask would repeat itself). With
``intents.retry_prefill`` (default) a re-ask is a continuation: the prompt, the
first attempt's reasoning (text before its first ``{``, at most
``intents.max_reasoning_chars``) and the opening ``{"profile": "`` of the
answer, so the model only has to finish the JSON; ``raw_output`` then holds
reasoning + prefix + continuation. The row keeps the best attempt
(ok > repaired > failed). If every attempt fails,
the row is written with ``fallback=true`` and ``status=failed``: profile = the
profile the model did write, if any, else the first two sentences of the source
text (for a user: of each of their first three prompt items); intents = the
intents the model did write, if any, else ``[]``. The parse-success rate
(first attempt and final) is logged and stored in the side manifest's ``meta``
and in ``intents/_report.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from irllrec_dist import storage
from irllrec_dist.config import Config, ConfigError, IntentsConfig, add_config_args, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data.readers import InputError
from irllrec_dist.llm import prompts as P
from irllrec_dist.llm.backends import Backend, Sampling, make_backend
from irllrec_dist.llm.parser import FAILED, OK, REPAIRED, ParseResult, _dedupe_sentences, parse_output

log = logging.getLogger("irllrec_dist.intents")

SCHEMA = pa.schema([
    ("id", pa.int64()), ("profile", pa.string()), ("intents", pa.list_(pa.string())),
    ("raw_output", pa.string()), ("status", pa.string()), ("attempts", pa.int32()),
    ("fallback", pa.bool_()), ("model", pa.string()), ("prompt_hash", pa.string()),
    ("n_output_tokens", pa.int32()),
])


def load_configs(paths: str | list[str] | None, overrides: list[str] = ()) -> tuple[Config, IntentsConfig]:
    cfg = load_config(paths, overrides)
    return cfg, cfg.intents


def side_uri(run_root: str, side: str) -> str:
    return storage.join(run_root, "intents", side)


def chunk_uri(run_root: str, side: str, k: int) -> str:
    return storage.join(side_uri(run_root, side), f"chunk-{k:05d}")


def read_intents(run_root: str, side: str) -> pa.Table:
    """The committed output of one side (raises storage.OutputMissing until every chunk is done)."""
    return storage.read_table(side_uri(run_root, side))


# ----------------------------------------------------------------------------------------------
# entities and prompts


@dataclass
class _Side:
    name: str
    template: P.PromptTemplate
    ids: np.ndarray  # entities that get a prompt, ascending
    messages: Callable[[int], list[dict]]
    source: Callable[[int], str]  # text the fallback profile is cut from
    n_without_text: int


def _sides(data: ds.Dataset, ic: IntentsConfig) -> dict[str, _Side]:
    item_has = np.array([bool(t and str(t).strip()) for t in data.item_text], dtype=bool)
    out = {}
    if "items" in ic.sides:
        tpl = P.load_template("items", ic.prompt_dir)
        ids = np.flatnonzero(item_has).astype(np.int64)
        out["items"] = _Side(
            "items", tpl, ids,
            messages=lambda i, tpl=tpl: P.item_messages(tpl, data.item_text[i], ic.max_text_chars, ic.max_intents),
            source=lambda i: data.item_text[i] or "",
            n_without_text=int(data.n_items - ids.size))
    if "users" in ic.sides:
        tpl = P.load_template("users", ic.prompt_dir)
        chosen = P.choose_user_items(data.train, item_has, data.n_users, ic.user_max_items, ic.seed)
        ids = np.array(sorted(chosen), dtype=np.int64)

        def umsg(u, tpl=tpl):
            return P.user_messages(tpl, [data.item_text[i] for i in chosen[u]], ic.user_item_chars,
                                   ic.max_intents)

        def usrc(u):
            return " ".join(P.first_sentences(data.item_text[i], 1) for i in chosen[u][:3])

        out["users"] = _Side("users", tpl, ids, umsg, usrc, int(data.n_users - ids.size))
    return out


# ----------------------------------------------------------------------------------------------
# one chunk


JSON_PREFIX = '{"profile": "'


def reasoning_of(text: str, max_chars: int) -> str:
    """The reasoning part of an answer: the text before its first '{', clipped at a sentence end."""
    head = text.split("{", 1)[0].replace("```json", "").replace("```", "")
    head, _ = _dedupe_sentences(" ".join(head.split()))  # small models loop; keep one copy
    if len(head) <= max_chars:
        return head
    cut = head[:max_chars]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[:end + 1] if end > max_chars // 3 else cut


def _better(new: ParseResult, old: ParseResult | None) -> bool:
    if old is None:
        return True
    rank = {OK: 2, REPAIRED: 1, FAILED: 0}
    if rank[new.status] != rank[old.status]:
        return rank[new.status] > rank[old.status]
    return (bool(new.profile) + bool(new.intents)) >= (bool(old.profile) + bool(old.intents))


def _generate_chunk(side: _Side, ids: np.ndarray, chunk_index: int, backend: Backend, ic: IntentsConfig,
                    bar: tqdm, counters: dict) -> tuple[pa.Table, dict]:
    n = len(ids)
    prompts = [backend.render(side.messages(int(e))) for e in ids]
    best: list[ParseResult | None] = [None] * n
    raw = [""] * n
    attempts = np.zeros(n, dtype=np.int32)
    tokens = np.zeros(n, dtype=np.int64)
    first = collections.Counter()
    reasons = collections.Counter()
    prompt_tokens = 0
    pending = list(range(n))
    reasoning = [""] * n  # the first attempt's reasoning, reused by prefilled re-asks
    for attempt in range(1 + ic.max_retries):
        if not pending:
            break
        sampling = Sampling(max_new_tokens=ic.max_new_tokens,
                            temperature=ic.temperature if attempt == 0 else ic.retry_temperature,
                            top_p=ic.top_p, seed=ic.seed + 7919 * attempt + 104729 * chunk_index)
        # A re-ask continues the answer from the model's own reasoning and the opening of the JSON
        # object, which small models follow far better than the instruction alone.
        lead = {k: (reasoning[k] + "\n" + JSON_PREFIX).lstrip("\n") if attempt and ic.retry_prefill else ""
                for k in pending}
        for start in range(0, len(pending), ic.batch_size):
            batch = pending[start:start + ic.batch_size]
            t0 = time.time()
            gens = backend.generate([prompts[k] + lead[k] for k in batch], sampling)
            if len(gens) != len(batch):
                raise RuntimeError(f"backend {backend.name} returned {len(gens)} results for {len(batch)} prompts")
            for k, g in zip(batch, gens):
                attempts[k] += 1
                tokens[k] += g.n_output_tokens
                prompt_tokens += g.n_prompt_tokens
                text = lead[k] + g.text
                if attempt == 0:
                    reasoning[k] = reasoning_of(text, ic.max_reasoning_chars)
                r = parse_output(text, max_intents=ic.max_intents)
                reasons.update(r.reasons)
                if attempt == 0:
                    first[r.status] += 1
                if _better(r, best[k]):
                    best[k], raw[k] = r, text
            counters["tokens"] += sum(g.n_output_tokens for g in gens)
            counters["gen_seconds"] += time.time() - t0
            if attempt == 0:
                bar.update(len(batch))
            bar.set_postfix(tok_s=f"{counters['tokens'] / max(counters['gen_seconds'], 1e-9):.1f}",
                            retry=attempt, refresh=False)
        pending = [k for k in pending if best[k].status == FAILED]

    rows = {c: [] for c in SCHEMA.names}
    final = collections.Counter()
    n_fallback = 0
    for k, e in enumerate(ids):
        r = best[k]
        fallback = r.status == FAILED
        profile, intents = r.profile, list(r.intents)
        if fallback:
            n_fallback += 1
            if not profile:
                profile = P.first_sentences(side.source(int(e)), 2)
        final[r.status] += 1
        rows["id"].append(int(e))
        rows["profile"].append(profile)
        rows["intents"].append(intents)
        rows["raw_output"].append(raw[k])
        rows["status"].append(r.status)
        rows["attempts"].append(int(attempts[k]))
        rows["fallback"].append(fallback)
        rows["model"].append(ic.model)
        rows["prompt_hash"].append(side.template.hash)
        rows["n_output_tokens"].append(int(min(tokens[k], 2**31 - 1)))
    table = pa.table(rows, schema=SCHEMA)
    stats = {"n": n, "first": dict(first), "final": dict(final), "fallback": n_fallback,
             "generations": int(attempts.sum()), "output_tokens": int(tokens.sum()),
             "prompt_tokens": int(prompt_tokens), "reasons": dict(reasons)}
    return table, stats


# ----------------------------------------------------------------------------------------------
# the stage


def _summarise(side: str, stats: list[dict], seconds: float, new_tokens: int, new_entities: int) -> dict:
    tot = collections.Counter()
    first, final, reasons = collections.Counter(), collections.Counter(), collections.Counter()
    for s in stats:
        tot.update({k: s[k] for k in ("n", "fallback", "generations", "output_tokens", "prompt_tokens")})
        first.update(s["first"])
        final.update(s["final"])
        reasons.update(s["reasons"])
    n = max(tot["n"], 1)
    return {
        "side": side, "entities": tot["n"], "fallback": tot["fallback"],
        "first_attempt": dict(first), "final": dict(final),
        "parse_success_rate_first": round((first[OK] + first[REPAIRED]) / n, 4),
        "parse_success_rate_final": round((final[OK] + final[REPAIRED]) / n, 4),
        "generations": tot["generations"], "output_tokens": tot["output_tokens"],
        "prompt_tokens": tot["prompt_tokens"], "top_reasons": dict(reasons.most_common(12)),
        "this_run": {"entities": new_entities, "seconds": round(seconds, 2),
                     "entities_per_s": round(new_entities / max(seconds, 1e-9), 3),
                     "output_tokens_per_s": round(new_tokens / max(seconds, 1e-9), 2)},
    }


def _commit_side(run_root: str, side: str, chunk_hashes: list[str], side_hash: str, meta: dict) -> None:
    uri = side_uri(run_root, side)
    shards, num_rows = [], 0
    for k, h in enumerate(chunk_hashes):
        m = storage.read_manifest(chunk_uri(run_root, side, k))
        if m is None or m["config_hash"] != h:
            raise storage.CorruptOutput(f"{chunk_uri(run_root, side, k)}: chunk not committed with hash {h}")
        for s in m["shards"]:
            shards.append({"path": f"chunk-{k:05d}/{s['path']}", "num_rows": s["num_rows"]})
        num_rows += m["num_rows"]
    manifest = {
        "format_version": storage.FORMAT_VERSION, "shards": shards, "num_rows": num_rows,
        "schema": SCHEMA.to_string(show_schema_metadata=False),
        "schema_ipc": SCHEMA.serialize().to_pybytes().hex(), "config_hash": side_hash, "meta": meta,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json(storage.join(uri, storage.MANIFEST), manifest)
    # chunk folders left over from an earlier chunking are no longer listed: remove them
    fs, path = storage.filesystem(uri)
    keep = {f"chunk-{k:05d}" for k in range(len(chunk_hashes))}
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("chunk-") and name not in keep:
            fs.rm(entry, recursive=True)


def run(cfg: Config, ic: IntentsConfig | None = None, backend: Backend | None = None,
        after_chunk: Callable[[str, int], None] | None = None) -> dict:
    """Generate what is missing; returns the report. ``after_chunk(side, k)`` runs after each commit."""
    ic = ic or cfg.intents
    data = ds.load(cfg.run_root)
    ingest_hash = storage.read_manifest(storage.join(ds.dataset_uri(cfg.run_root), "items"))["config_hash"]
    sides = _sides(data, ic)
    report: dict = {"model": ic.model, "backend": ic.backend, "sides": {}}
    owned = backend is None
    try:
        for name in ic.sides:
            side = sides[name]
            ids = side.ids[:ic.limit] if ic.limit else side.ids
            chunks = [ids[s:s + ic.chunk_size] for s in range(0, len(ids), ic.chunk_size)]
            if not chunks:
                raise InputError(f"{ds.dataset_uri(cfg.run_root)}: no {name} with text to prompt for")
            base = {"stage": "intents", "side": name, "dataset": ingest_hash, "prompt_hash": side.template.hash,
                    **ic.generation_key()}
            hashes = [storage.config_hash({**base, "ids": storage.config_hash(c.tolist()), "chunk": k})
                      for k, c in enumerate(chunks)]
            side_hash = storage.config_hash({**base, "chunks": hashes})
            uri = side_uri(cfg.run_root, name)
            m = storage.read_manifest(uri)
            if m is not None and m["config_hash"] == side_hash:
                log.info("intents/%s up to date (config hash %s); skipping", name, side_hash)
                report["sides"][name] = m["meta"]
                continue
            if m is not None:  # stale: make the side absent before any chunk is replaced
                fs, path = storage.filesystem(uri)
                fs.rm(f"{path}/{storage.MANIFEST}")
            todo = [k for k, h in enumerate(hashes)
                    if not storage.is_complete(chunk_uri(cfg.run_root, name, k), h)]
            log.info("intents/%s: %d entities in %d chunks, %d to generate (%d chunks already committed); "
                     "prompt %s (%s)", name, len(ids), len(chunks), sum(len(chunks[k]) for k in todo),
                     len(chunks) - len(todo), side.template.hash, side.template.source)
            t0 = time.time()
            counters = {"tokens": 0, "gen_seconds": 0.0}
            done_entities = 0
            if todo and backend is None:
                backend = make_backend(ic.backend, ic.model, cache_dir=ic.cache_dir, device=ic.device,
                                       dtype=ic.dtype, batch_size=ic.batch_size, threads=ic.threads,
                                       seed=ic.seed, engine_args=ic.engine_args)
            bar = tqdm(total=sum(len(chunks[k]) for k in todo), desc=f"intents/{name}", unit="ent",
                       dynamic_ncols=True)
            for k in todo:
                tc = time.time()
                table, stats = _generate_chunk(side, chunks[k], k, backend, ic, bar, counters)
                storage.write_table(chunk_uri(cfg.run_root, name, k), table, hashes[k],
                                    meta={"stage": "intents", "side": name, "model": ic.model,
                                          "prompt_hash": side.template.hash, "stats": stats})
                done_entities += len(chunks[k])
                dt = time.time() - tc
                log.info("intents/%s chunk %d/%d: %d entities in %.1fs (%.2f ent/s, %.1f tok/s); first try "
                         "%s; final %s; fallback %d", name, k + 1, len(chunks), stats["n"], dt,
                         stats["n"] / max(dt, 1e-9), stats["output_tokens"] / max(dt, 1e-9), stats["first"],
                         stats["final"], stats["fallback"])
                if after_chunk is not None:
                    after_chunk(name, k)
            bar.close()
            all_stats = [storage.read_manifest(chunk_uri(cfg.run_root, name, k))["meta"]["stats"]
                         for k in range(len(chunks))]
            summary = _summarise(name, all_stats, time.time() - t0, counters["tokens"], done_entities)
            summary.update(prompt_hash=side.template.hash, model=ic.model, chunks=len(chunks),
                           without_text=side.n_without_text)
            _commit_side(cfg.run_root, name, hashes, side_hash, summary)
            report["sides"][name] = summary
            log.info("intents/%s: parse success %.1f%% first try, %.1f%% final; %d fallbacks; this run %s",
                     name, 100 * summary["parse_success_rate_first"], 100 * summary["parse_success_rate_final"],
                     summary["fallback"], summary["this_run"])
    finally:
        if owned and backend is not None:
            backend.close()
    storage.write_json(storage.join(cfg.run_root, "intents", "_report.json"), report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg, ic = load_configs(args.config, args.overrides)
        report = run(cfg, ic)
    except (ConfigError, InputError) as e:
        print(f"intents: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
