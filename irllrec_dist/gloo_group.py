"""A gloo process group on loopback for the processes this project spawns itself (the
training benchmark's workers, the multi-rank tests); Ray Train sets up its own."""

from __future__ import annotations

import contextlib
import os
import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def loopback_gloo_group(rank: int, world: int, port: int):
    """This process as ``rank`` of ``world`` gloo ranks meeting on 127.0.0.1:``port``; the group
    is destroyed on leaving, errors included."""
    # torch._dynamo, first imported by the first optimizer, imports torch.distributed modules
    # that keep references to the default group when it already exists. The group then outlives
    # destroy_process_group and is torn down at interpreter exit while gloo's threads still run:
    # the rank dies with SIGABRT ("terminate called without an active exception") in about one
    # run in ten. Imported before the group exists, they hold nothing.
    import torch._dynamo  # noqa: F401
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
