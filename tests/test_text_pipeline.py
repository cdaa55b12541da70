"""The text path end to end with the real MiniLM model: embed -> IRLLRec training -> evaluate."""

import io

import numpy as np
import torch

from irllrec_dist import embed, evaluate, ingest, storage, train
from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic


def test_embed_then_train_irllrec(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    cfg = Config(run_root=str(tmp_path / "root"))
    cfg.ingest.source = str(raw)
    cfg.model.intents = 8
    for k, v in dict(prf=0.01, ia=0.02, ta=0.02, itm=0.02, itm_max_nodes=32).items():
        setattr(cfg.loss, k, v)
    cfg.train.max_epochs, cfg.train.threads, cfg.train.batch_size, cfg.train.run_name = 4, 1, 256, "irl"
    cfg.validate()
    ingest.run(cfg)
    embed.run(cfg)

    data = ds.load(cfg.run_root)
    items = storage.read_table(embed.embeddings_uri(cfg.run_root, "items"))
    users = storage.read_table(embed.embeddings_uri(cfg.run_root, "users"))
    assert items.schema.field("profile").type.list_size == 384
    iv = np.stack(items.column("profile").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    # a user's vector is the normalised mean of its TRAINING items' vectors only
    u0 = int(users.column("id")[0].as_py())
    mine = data.train[data.train[:, 0] == u0, 1]
    mean = iv[np.searchsorted(items.column("id").to_numpy(), mine)].mean(0)
    uv = np.asarray(users.column("profile")[0].as_py())
    assert np.allclose(uv, mean / np.linalg.norm(mean), atol=1e-5)

    before = storage.read_manifest(embed.embeddings_uri(cfg.run_root, "items"))
    embed.run(cfg)  # same config: skipped, nothing rewritten
    assert storage.read_manifest(embed.embeddings_uri(cfg.run_root, "items")) == before

    summary = train.run(cfg)
    terms = set(summary["history"][0])
    assert {"bpr", "reg", "prf", "ia", "ta", "itm"} <= terms
    assert all(np.isfinite(summary["history"][-1][t]) for t in ("prf", "ia", "ta", "itm"))
    ckpt = torch.load(io.BytesIO(storage.read_bytes(evaluate.run_uri(cfg, "checkpoints", "best.pt"))),
                      weights_only=True)
    assert ckpt["teacher"] is not None and ckpt["text_dim"] == 384
    assert "module.user_protos" in ckpt["teacher"]
    again = evaluate.run(cfg, "test", export=False)
    assert again["recall@20"] == summary["test"]["recall@20"]
    rows = evaluate.reference_rows(cfg)
    assert set(rows) == {"popularity", "text_only"}
