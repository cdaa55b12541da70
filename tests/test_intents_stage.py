"""The intent stage: prompts, a real transformers backend on a tiny random Llama, retries, resume."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_config

from irllrec_dist import artifacts, ingest, intents, storage
from irllrec_dist.config import ConfigError, SyntheticConfig, load_config
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic
from irllrec_dist.llm import prompts as P
from irllrec_dist.llm.backends import Backend, GenerationResult, Sampling, TransformersBackend
from irllrec_dist.llm.parser import FAILED


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """A small synthetic dataset, ingested into the canonical layout."""
    raw = tmp_path_factory.mktemp("raw_small")
    synthetic.write_raw(
        synthetic.generate(SyntheticConfig(seed=5, n_users=40, n_items=30, n_intents=4, mean_degree=6)), str(raw)
    )
    root = tmp_path_factory.mktemp("root_small")
    ingest.run(make_config(root, raw))
    return root


def _ic(**kw) -> intents.IntentsConfig:
    base = dict(
        max_new_tokens=8,
        batch_size=8,
        max_retries=1,
        chunk_size=8,
        user_max_items=3,
        user_item_chars=60,
        max_text_chars=200,
        threads=1,
    )
    base.update(kw)
    ic = intents.IntentsConfig(**base)
    ic.validate()
    return ic


class ScriptedBackend(Backend):
    """Deterministic fake model: good JSON for most prompts, garbage first (then good) for some,
    always garbage for a few; records every prompt it was asked."""

    name = "scripted"

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def render(self, messages):
        return P.render_plain(messages)

    def generate(self, prompts, sampling: Sampling):
        out = []
        for p in prompts:
            self.calls.append((p, sampling.temperature))
            base, _, lead = p.partition("Assistant:")
            h = int(hashlib.sha256(base.encode()).hexdigest(), 16)
            tag = f"{h % 10**8:08d}"
            if h % 11 == 0:
                text = "I cannot decide."  # always fails -> fallback
            elif lead.endswith(intents.JSON_PREFIX):  # a prefilled re-ask: continue the JSON
                text = f'P{tag}.", "intents": ["i{tag}", "shared"]}}'
            elif h % 3 == 0:
                text = "Thinking about it. {'profile': 'cut"  # first try fails, a re-ask succeeds
            elif h % 5 == 0:
                text = f"Reasoning.\n```json\n{{'profile': 'P{tag}.', 'intents': ['i{tag}', 'i{tag}',]}}\n```"
            else:
                text = f'Reasoning.\n{{"profile": "P{tag}.", "intents": ["i{tag}", "shared"]}}'
            out.append(GenerationResult(text, len(p.split()), len(text.split())))
        return out


class ExplodingBackend(Backend):
    name = "exploding"

    def render(self, messages):
        return P.render_plain(messages)

    def generate(self, prompts, sampling):
        raise AssertionError("nothing should be generated")


def _prompt_to_id(cfg, ic) -> dict:
    data = ds.load(cfg.run_root)
    sides = intents._sides(data, ic)
    return {side: {P.render_plain(s.messages(int(e))): int(e) for e in s.ids} for side, s in sides.items()}


# ----------------------------------------------------------------------------------------------


def test_prompts_are_versioned_and_users_use_training_items_only(small_root):
    tpl = P.load_template("items")
    assert len(tpl.hash) == 12 and tpl.hash != P.load_template("users").hash
    edited = P.parse_template(open(P.DEFAULT_DIR / "item.txt").read() + "\n# a comment\n")
    assert edited.hash != tpl.hash and edited.user == tpl.user  # comments are not sent but are versioned
    msgs = P.item_messages(tpl, "Text with {braces} and {text}.", 1000, 5)
    assert msgs[0]["role"] == "system" and "Text with {braces} and {text}." in msgs[1]["content"]
    assert '{"profile":' in msgs[1]["content"] and "{max_intents}" not in msgs[1]["content"]

    data = ds.load(str(small_root))
    has = np.array([t is not None for t in data.item_text])
    chosen = P.choose_user_items(data.train, has, data.n_users, 3, seed=0)
    again = P.choose_user_items(data.train, has, data.n_users, 3, seed=0)
    assert {u: v.tolist() for u, v in chosen.items()} == {u: v.tolist() for u, v in again.items()}  # deterministic
    train_pairs = {(int(u), int(i)) for u, i in data.train}
    for u, items in chosen.items():
        assert 1 <= len(items) <= 3 and list(items) == sorted(items)
        assert all((u, int(i)) in train_pairs for i in items)
    # a user's val/test items never appear in its prompt (unless also a training item)
    heldout = {(int(u), int(i)) for u, i in np.concatenate([data.val, data.test])} - train_pairs
    assert not any((u, int(i)) in heldout for u, items in chosen.items() for i in items)
    with pytest.raises(ValueError, match=r"no \[user\] section"):
        P.parse_template("[system]\nhello\n")


def test_transformers_backend_left_padding_on_tiny_llama(tiny_llama):
    b = TransformersBackend(tiny_llama, batch_size=4, threads=1)
    assert b.tokenizer.padding_side == "left"
    prompts = [
        b.render([{"role": "user", "content": t}])
        for t in ("short", "a much longer prompt about a quiet cafe with fast wifi", "mid length text")
    ]
    assert prompts[0].startswith("<|im_start|>user\nshort<|im_end|>\n<|im_start|>assistant\n")
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    batched = b.generate(prompts, greedy)
    single = [b.generate([p], greedy)[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]  # padding does not change greedy output
    for r in batched:
        assert 1 <= r.n_output_tokens <= 6 and r.n_prompt_tokens > 0
    assert batched[1].n_prompt_tokens > batched[0].n_prompt_tokens
    sampled = b.generate(prompts, Sampling(max_new_tokens=6, temperature=1.0, seed=1))
    assert sampled == b.generate(prompts, Sampling(max_new_tokens=6, temperature=1.0, seed=1))


def test_stage_cli_runs_tiny_llama_for_real(small_root, tiny_llama, tmp_path, capsys):
    root = tmp_path / "root"
    import shutil

    shutil.copytree(small_root, root)
    args = [
        f"run_root={root}",
        f"intents.model={tiny_llama}",
        "intents.max_new_tokens=8",
        "intents.batch_size=8",
        "intents.chunk_size=16",
        "intents.max_retries=1",
        "intents.user_max_items=3",
        "intents.user_item_chars=60",
        "intents.max_text_chars=200",
        "intents.threads=1",
    ]
    assert intents.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    data = ds.load(str(root))
    item_ids = [i for i, t in enumerate(data.item_text) if t]
    user_ids = sorted(set(int(u) for u in data.train[:, 0]))
    for side, expected in (("items", item_ids), ("users", user_ids)):
        t = artifacts.read_intents(str(root), side)
        assert t.schema.equals(intents.SCHEMA)
        rows = t.to_pylist()
        assert sorted(r["id"] for r in rows) == expected  # every entity exactly once
        for r in rows:
            assert r["model"] == tiny_llama and r["prompt_hash"] == P.load_template(side).hash
            assert 1 <= r["attempts"] <= 2 and 0 < r["n_output_tokens"] <= 16
            assert r["fallback"] == (r["status"] == FAILED)
            if r["status"] == FAILED:  # a random model writes no JSON: the fallback is recorded, never silent
                assert r["attempts"] == 2 and r["profile"]
        rep = report["sides"][side]
        assert rep["entities"] == len(expected)
        assert 0.0 <= rep["parse_success_rate_first"] <= rep["parse_success_rate_final"] <= 1.0
        assert rep["fallback"] == sum(r["fallback"] for r in rows)
    items = {r["id"]: r for r in artifacts.read_intents(str(root), "items").to_pylist()}
    from irllrec_dist.llm.parser import parse_output

    for r in items.values():
        if r["fallback"]:  # the model's own profile when it wrote one, else the source's first sentences
            parsed = parse_output(r["raw_output"], max_intents=8)
            assert parsed.status == FAILED
            assert r["profile"] == (parsed.profile or P.first_sentences(data.item_text[r["id"]], 2))
            assert r["intents"] == parsed.intents
    # a second run finds everything committed and loads no model
    intents.run(load_config(None, args), backend=ExplodingBackend())


def test_ray_actors_give_what_one_process_gives(small_root, tiny_llama, tmp_path):
    """intents.actors=2: two Ray actors, one backend each, generate whole chunks that the driver
    commits; the output is row for row what the in-process run writes (decoding is seeded per chunk)."""
    import shutil

    import ray

    args = [
        f"intents.model={tiny_llama}",
        "intents.max_new_tokens=8",
        "intents.batch_size=8",
        "intents.chunk_size=8",
        "intents.max_retries=1",
        "intents.user_max_items=3",
        "intents.user_item_chars=60",
        "intents.max_text_chars=200",
        "intents.threads=1",
    ]
    roots = {}
    for mode in ("process", "actors"):
        roots[mode] = tmp_path / mode
        shutil.copytree(small_root, roots[mode])
    intents.run(load_config(None, [f"run_root={roots['process']}", *args]))
    ray.init(num_cpus=2, address="local", include_dashboard=False)
    try:
        intents.run(load_config(None, [f"run_root={roots['actors']}", *args, "intents.actors=2"]))
    finally:
        ray.shutdown()
    for side in ("items", "users"):
        one, two = (artifacts.read_intents(str(roots[m]), side).sort_by("id").to_pylist() for m in roots)
        assert len(one) > 8 and one == two  # several chunks, identical rows


def test_retries_fallback_kill_and_resume(small_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(small_root, root)
    cfg = make_config(root, "unused")
    ic = _ic()
    to_id = _prompt_to_id(cfg, ic)
    sides = intents._sides(ds.load(cfg.run_root), ic)
    n_items, n_users = len(sides["items"].ids), len(sides["users"].ids)  # two users may share a prompt
    assert len(to_id["items"]) == n_items
    n_chunks = -(-n_items // ic.chunk_size)
    assert n_chunks >= 3

    class Crash(RuntimeError):
        pass

    def crash_after_two(side, k):
        if side == "items" and k == 1:
            raise Crash("killed after chunk 1")

    first = ScriptedBackend()
    with pytest.raises(Crash):
        intents.run(cfg, ic, backend=first, after_chunk=crash_after_two)
    with pytest.raises(storage.OutputMissing):  # the side is not visible until complete
        artifacts.read_intents(str(root), "items")
    assert storage.read_manifest(artifacts.chunk_uri(str(root), "items", 1)) is not None
    assert storage.read_manifest(artifacts.chunk_uri(str(root), "items", 2)) is None
    done_first = {to_id["items"][p] for p, _ in first.calls if p in to_id["items"]}
    assert done_first == set(sorted(to_id["items"].values())[: 2 * ic.chunk_size])

    second = ScriptedBackend()
    report = intents.run(cfg, ic, backend=second)
    redone = {to_id["items"][p] for p, _ in second.calls if p in to_id["items"]}
    assert not redone & done_first  # committed chunks are not regenerated
    assert redone == set(to_id["items"].values()) - done_first
    for side, n in (("items", n_items), ("users", n_users)):
        rows = artifacts.read_intents(str(root), side).to_pylist()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)) == n  # every entity exactly once
        by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "repaired", "failed")}
        assert by_status["ok"] and by_status["repaired"] and by_status["failed"]
        for r in by_status["failed"]:
            assert r["fallback"] and r["intents"] == [] and r["profile"] and r["attempts"] == 1 + ic.max_retries
            assert r["raw_output"].startswith("I cannot decide.") and r["raw_output"].endswith("I cannot decide.")
        for r in by_status["ok"] + by_status["repaired"]:
            assert not r["fallback"] and r["profile"].startswith("P") and r["intents"][0].startswith("i")
            assert len(r["intents"]) == len(set(r["intents"]))
        fixed = [r for r in rows if r["attempts"] == 2 and r["status"] != "failed"]
        assert fixed  # a re-ask fixed it: it continued the first reasoning from the JSON prefix
        assert all(r["raw_output"].startswith('Thinking about it.\n{"profile": "P') for r in fixed)
        rep = report["sides"][side]
        assert rep["entities"] == n and rep["fallback"] == len(by_status["failed"])
        assert rep["parse_success_rate_final"] == pytest.approx(1 - len(by_status["failed"]) / n, abs=1e-4)
        assert rep["parse_success_rate_first"] < rep["parse_success_rate_final"]
    # re-asks sample (a greedy re-ask would repeat itself)
    temps = {t for _, t in first.calls + second.calls}
    assert temps == {ic.temperature, ic.retry_temperature}
    saved = artifacts.read_report(str(root))
    assert saved["sides"]["items"]["entities"] == n_items

    # a rerun with the same config generates nothing
    intents.run(cfg, ic, backend=ExplodingBackend())

    # a changed generation setting regenerates everything; a changed chunking leaves no stale chunk
    # once nothing touched it for a lease (0 s here: no other writer)
    monkeypatch.setenv("IRLLREC_ATTEMPT_LEASE_S", "0")
    third = ScriptedBackend()
    intents.run(cfg, _ic(max_intents=3, chunk_size=20), backend=third)
    assert sum(t == ic.temperature for _, t in third.calls) == n_items + n_users
    rows = artifacts.read_intents(str(root), "items").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(to_id["items"].values())
    fs, path = storage.filesystem(artifacts.side_uri(str(root), "items"))
    chunks = sorted(e.rsplit("/", 1)[-1] for e in fs.ls(path, detail=False) if "chunk-" in e)
    assert chunks == [f"chunk-{k:05d}" for k in range(-(-n_items // 20))]


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(
        None,
        [
            f"run_root={tmp_path}",
            "intents.batch_size=4",
            "intents.backend=vllm",
            "intents.engine_args.max_model_len=1024",
            "intents.sides=[items]",
        ],
    )
    ic = cfg.intents
    assert cfg.run_root == str(tmp_path)
    assert (ic.batch_size, ic.backend, ic.engine_args, ic.sides) == (4, "vllm", {"max_model_len": 1024}, ("items",))
    with pytest.raises(ConfigError, match="intents.bogus"):
        load_config(None, ["intents.bogus=1"])
    with pytest.raises(ConfigError, match="intents.backend"):
        load_config(None, ["intents.backend=llama"])
    with pytest.raises(ConfigError, match="intents.batch_size"):
        load_config(None, ["intents.batch_size=x"])
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        from irllrec_dist.llm.backends import resolve_model

        resolve_model(str(tmp_path / "no-such-model"))


def test_schema_is_what_the_contract_says():
    assert intents.SCHEMA.field("intents").type == pa.list_(pa.string())
    assert intents.SCHEMA.names == [
        "id",
        "profile",
        "intents",
        "raw_output",
        "status",
        "attempts",
        "fallback",
        "model",
        "prompt_hash",
        "n_output_tokens",
    ]
