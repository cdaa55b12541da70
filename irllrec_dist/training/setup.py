"""Everything a rank trains with, built once: the graph (``build_graph``, shared across a node's
Ray workers through the object store), then the model, its EMA teacher, the sampler, the optimiser
step and the random streams (``build_trainer``). ``bench`` builds its trainers here too."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from irllrec_dist.artifacts import load_text
from irllrec_dist.cli import StageError
from irllrec_dist.config import Config, TrainConfig
from irllrec_dist.data import dataset as ds
from irllrec_dist.graph.adjacency import BipartiteAdjacency, build_adjacency
from irllrec_dist.graph.blocks import BipartiteCSR, build_csr
from irllrec_dist.graph.negative_sampler import edge_keys, sample_negatives
from irllrec_dist.graph.neighbor_sampler import NeighborSampler, make_sampler
from irllrec_dist.model.dual_tower import DualTower, TextInputs, build_model
from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.model.objective import warmup_scale
from irllrec_dist.training.step import StepForward, TrainStep, to_device


@dataclass
class TrainingGraph:
    """What every rank trains on: the dataset, the normalised adjacency (full-graph steps and
    evaluation; None where neither runs, e.g. a sampled benchmark) and, with sampled steps, the
    symmetric CSR the sampler walks."""

    data: ds.Dataset
    adj: BipartiteAdjacency | None
    csr: BipartiteCSR | None


def build_graph(cfg: Config) -> TrainingGraph:
    data = ds.load(cfg.run_root, with_test=cfg.train.test)  # a search never reads the test split
    csr = build_csr(data.train, data.n_users, data.n_items) if cfg.train.fanout_list() else None
    return TrainingGraph(data, build_adjacency(data.train, data.n_users, data.n_items), csr)


def share_graph(graph: TrainingGraph) -> dict:
    """Tensors as numpy arrays, which the Ray object store hands to every worker of a node
    zero-copy from one shared-memory object (tensors would be pickled, i.e. copied per worker)."""

    def arrays(obj):
        if obj is None:
            return None
        values = {f.name: getattr(obj, f.name) for f in fields(obj)}
        return type(obj), {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

    return {"data": graph.data, "adj": arrays(graph.adj), "csr": arrays(graph.csr)}


def unshare_graph(shared: dict) -> TrainingGraph:
    def tensors(packed):
        if packed is None:
            return None
        cls, values = packed
        with warnings.catch_warnings():  # read-only shared memory: nothing here writes into it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in values.items()})

    return TrainingGraph(shared["data"], tensors(shared["adj"]), tensors(shared["csr"]))


def pick_device(tc: TrainConfig) -> torch.device:
    """CUDA when train.gpus_per_worker is 1 (refused in one line where torch sees none), else the CPU."""
    if tc.gpus_per_worker and not torch.cuda.is_available():
        raise StageError("train.gpus_per_worker=1 but torch sees no CUDA device here")
    return torch.device("cuda" if tc.gpus_per_worker else "cpu")


@dataclass
class Trainer:
    """One rank's model, teacher and optimiser step over the training edges, with the run's random
    streams: ``rng`` (negatives, shuffling) is seeded alike on every rank, so that ranks agree on
    every global batch and each takes its slice; ``gen`` (text-loss noise and hard negatives) is
    per rank and apart from ``rng``, so that switching those losses on does not change the graph
    tower's draws."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    data: ds.Dataset
    adj: BipartiteAdjacency | None  # on ``device``; the sampler's CSR stays on the CPU
    text: TextInputs | None
    model: DualTower
    teacher: EMATeacher | None
    sampler: NeighborSampler | None
    step: TrainStep
    rng: np.random.Generator
    gen: torch.Generator

    def __post_init__(self):
        self.users, self.items = self.data.train[:, 0], self.data.train[:, 1]
        self.train_keys = np.sort(edge_keys(self.users, self.items, self.data.n_items))
        self.batches_per_epoch = -(-len(self.users) // self.cfg.train.batch_size)
        self.warmup_steps = round(self.cfg.loss.warmup_epochs * self.batches_per_epoch)

    @property
    def n_edges(self) -> int:
        return len(self.users)

    def negatives(self) -> np.ndarray:
        """One uniform negative item per training edge, none of them a training item of its user."""
        return sample_negatives(self.users, self.train_keys, self.data.n_items, self.rng)

    def batch_step(self, edges: np.ndarray, negatives: np.ndarray, step: int):
        """One optimiser step on this rank's training ``edges`` (indices) and their ``negatives``:
        -> (loss, terms, bytes DDP all-reduced, bytes of table rows exchanged). ``step`` is the
        global step: it keys the sampled blocks and edge dropout and sets the intent warm-up."""
        tc, device = self.cfg.train, self.device
        mask = None
        if tc.edge_keep < 1.0 and self.sampler is None:
            mask = (torch.rand(self.n_edges) < tc.edge_keep).to(torch.float32).to(device)
        bu, bp, bn = (torch.from_numpy(x).to(device) for x in (self.users[edges], self.items[edges], negatives[edges]))
        return self.step(mask, bu, bp, bn, self.gen, (tc.seed, step), warmup_scale(step, self.warmup_steps))


def build_trainer(
    cfg: Config, rank: int = 0, world: int = 1, graph: TrainingGraph | None = None, device: torch.device | None = None
) -> Trainer:
    """A rank's trainer: ``graph`` is built here unless given (Ray workers get the driver's);
    ``device`` defaults to ``pick_device``. Seeds torch's global generator with train.seed first,
    so that every rank initialises the same model."""
    tc = cfg.train
    device = device if device is not None else pick_device(tc)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    graph = graph or build_graph(cfg)
    data = graph.data
    if len(data.train) < world:
        raise StageError(f"{len(data.train)} training edges cannot be split across {world} workers")
    text = to_device(load_text(cfg, data), device)
    model = build_model(cfg, data.n_users, data.n_items, text.dim if text is not None else None).to(device)
    teacher = EMATeacher(model, cfg.loss.ema_momentum) if cfg.loss.itm else None
    sampler = make_sampler(graph.csr, tc.fanout_list(), tc.sampler) if graph.csr is not None else None
    adj = to_device(graph.adj, device)
    step = TrainStep(StepForward(model, adj, sampler, text, cfg, teacher), tc.lr, world, tc.compile)
    gen = torch.Generator().manual_seed(tc.seed + 1 + rank)
    return Trainer(cfg, rank, world, device, data, adj, text, model, teacher, sampler, step, rng, gen)
