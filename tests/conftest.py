import os
import pathlib

import pytest

from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import synthetic

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    """A small planted-intent dataset in the raw Parquet format."""
    out = tmp_path_factory.mktemp("raw")
    cfg = SyntheticConfig(seed=3, n_users=1000, n_items=600, n_intents=24, mean_degree=15)
    synthetic.write_raw(synthetic.generate(cfg), str(out))
    return out


def make_config(run_root, source, **train) -> Config:
    cfg = Config(run_root=str(run_root))
    cfg.ingest.source = str(source)
    cfg.ingest.format = "parquet"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    cfg.validate()
    return cfg
