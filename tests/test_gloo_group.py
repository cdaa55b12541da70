"""The loopback gloo group the benchmark's workers and the multi-rank tests run in."""

import json
import pathlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from irllrec_dist.gloo_group import free_port, loopback_gloo_group

TASKS = pathlib.Path("/proc/self/task")


def _worker(rank, world, port, out_dir):
    with loopback_gloo_group(rank, world, port):
        model = torch.nn.Linear(3, 3)
        opt = torch.optim.Adam(model.parameters())  # this process's first optimizer: it imports torch._dynamo
        model(torch.ones(2, 3)).sum().backward()
        dist.all_reduce(model.weight.grad)
        opt.step()
        inside = [(t / "comm").read_text().strip() for t in TASKS.iterdir()]
    after = [(t / "comm").read_text().strip() for t in TASKS.iterdir()]
    pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"inside": inside, "after": after}))


@pytest.mark.skipif(not TASKS.is_dir(), reason="needs Linux /proc to list the process's threads")
def test_leaving_the_group_stops_gloos_threads(tmp_path):
    """A group that outlives destroy_process_group is torn down at interpreter exit, racing
    gloo's threads: ranks then died with SIGABRT in about one run in ten. Every gloo thread
    must be gone once the group is left, in fresh processes where an optimizer was built
    inside the group."""
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        threads = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert any("gloo" in name for name in threads["inside"]), threads  # the check can see them
        assert not any("gloo" in name for name in threads["after"]), threads
