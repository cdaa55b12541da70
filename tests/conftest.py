import os
import pathlib

import pytest

from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import synthetic
from irllrec_dist.llm import prompts as P

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


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random 1-layer Llama (head_dim 64) with a small byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [P.load_template("items").user, P.load_template("users").user] + [
        " ".join(ways) for _, ways in synthetic.INTENTS
    ]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        initializer_range=0.2,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return str(out)


def random_ranking_problem(nu: int, ni: int, test_density: float):
    """Random user/item vectors (d=8), a 10%-dense binary train matrix and a test matrix
    disjoint from it (float32 CSR): (u, i, test, train)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    g = torch.Generator().manual_seed(0)
    u, i = torch.randn(nu, 8, generator=g), torch.randn(ni, 8, generator=g)
    train = sp.random(nu, ni, density=0.1, format="csr", random_state=1)
    train.data[:] = 1
    test = sp.random(nu, ni, density=test_density, format="csr", random_state=2)
    test = sp.csr_matrix((test - train.multiply(1e9)) > 0, dtype=np.float32)
    return u, i, test, train
