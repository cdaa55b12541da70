"""Generation with re-asks: one answer per prompt, failed parses asked again.

    settings = RetrySettings.of(cfg.intents)          # or RetrySettings(max_new_tokens=..., ...)
    out = generate_with_retries(backend, prompts, settings, chunk_index=k)
    out.entities[i].result, out.entities[i].text, out.first, out.reasons

The intents stage (``intents._generate_chunk``) and ``bench intents`` both generate through
``generate_with_retries``. It imports only ``irllrec_dist.llm`` and the standard library, so it
also runs in a vLLM environment that lacks the project's other dependencies.

Attempt 0 samples with ``temperature`` (0 = greedy); each later attempt re-asks the entities
whose best answer so far failed to parse, with ``retry_temperature`` and the seed
``seed + 7919 * attempt + 104729 * chunk_index`` (a greedy re-ask would repeat itself). With
``retry_prefill`` a re-ask continues the answer from the first attempt's reasoning and the
opening of the JSON object. An entity keeps its best attempt (ok > repaired > failed).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from irllrec_dist.llm.backends import Backend, GenerationResult, Sampling
from irllrec_dist.llm.parser import FAILED, JSON_PREFIX, OK, REPAIRED, ParseResult, parse_output, reasoning_of


@dataclass
class RetrySettings:
    """What changes the generations (the names are ``intents.*`` keys) and the batch size."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # first attempt; 0 = greedy
    top_p: float = 0.95
    retry_temperature: float = 0.7
    seed: int = 0
    max_retries: int = 2
    retry_prefill: bool = True
    max_reasoning_chars: int = 600
    max_intents: int = 8
    batch_size: int = 8  # prompts per generate call

    @classmethod
    def of(cls, config, **overrides) -> RetrySettings:
        """From any object with these attributes (``IntentsConfig``), some of them replaced."""
        return cls(**{f.name: overrides.get(f.name, getattr(config, f.name)) for f in fields(cls)})


@dataclass
class EntityGeneration:
    """One prompt's outcome: the best attempt's parse and the text it was parsed from (with a
    prefilled re-ask: reasoning + JSON opening + continuation), and the first attempt's."""

    result: ParseResult | None = None
    text: str = ""
    first_text: str = ""
    first_status: str = ""
    attempts: int = 0
    output_tokens: int = 0  # over every attempt
    prompt_tokens: int = 0  # over every attempt


@dataclass
class Generated:
    entities: list[EntityGeneration]
    first: collections.Counter = field(default_factory=collections.Counter)  # first attempts' statuses
    reasons: collections.Counter = field(default_factory=collections.Counter)  # parser reasons, every attempt

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.entities)

    @property
    def output_tokens(self) -> int:
        return sum(e.output_tokens for e in self.entities)


def better(new: ParseResult, old: ParseResult | None) -> bool:
    """``new`` replaces ``old``: a better status, or the same status with at least as much content."""
    if old is None:
        return True
    rank = {OK: 2, REPAIRED: 1, FAILED: 0}
    if rank[new.status] != rank[old.status]:
        return rank[new.status] > rank[old.status]
    return (bool(new.profile) + bool(new.intents)) >= (bool(old.profile) + bool(old.intents))


def generate_with_retries(
    backend: Backend,
    prompts: list[str],
    settings: RetrySettings,
    chunk_index: int = 0,
    on_batch: Callable[[int, list[int], list[GenerationResult], float], None] | None = None,
) -> Generated:
    """Generate for every prompt, re-asking those whose answer does not parse (module docstring).
    ``on_batch(attempt, entity indices, generations, seconds)`` runs after each generate call
    (progress, throughput)."""
    s = settings
    out = Generated([EntityGeneration() for _ in prompts])
    ents = out.entities
    pending = list(range(len(prompts)))
    reasoning = [""] * len(prompts)  # the first attempt's reasoning, reused by prefilled re-asks
    for attempt in range(1 + s.max_retries):
        if not pending:
            break
        sampling = Sampling(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature if attempt == 0 else s.retry_temperature,
            top_p=s.top_p,
            seed=s.seed + 7919 * attempt + 104729 * chunk_index,
        )
        # A re-ask continues the answer from the model's own reasoning and the opening of the JSON
        # object, which small models follow far better than the instruction alone.
        lead = {
            k: (reasoning[k] + "\n" + JSON_PREFIX).lstrip("\n") if attempt and s.retry_prefill else "" for k in pending
        }
        for start in range(0, len(pending), s.batch_size):
            batch = pending[start : start + s.batch_size]
            t0 = time.time()
            gens = backend.generate([prompts[k] + lead[k] for k in batch], sampling)
            if len(gens) != len(batch):
                raise RuntimeError(f"backend {backend.name} returned {len(gens)} results for {len(batch)} prompts")
            for k, g in zip(batch, gens):
                e = ents[k]
                e.attempts += 1
                e.output_tokens += g.n_output_tokens
                e.prompt_tokens += g.n_prompt_tokens
                text = lead[k] + g.text
                if attempt == 0:
                    reasoning[k] = reasoning_of(text, s.max_reasoning_chars)
                r = parse_output(text, max_intents=s.max_intents)
                out.reasons.update(r.reasons)
                if attempt == 0:
                    out.first[r.status] += 1
                    e.first_text, e.first_status = text, r.status
                if better(r, e.result):
                    e.result, e.text = r, text
            if on_batch is not None:
                on_batch(attempt, batch, gens, time.time() - t0)
        pending = [k for k in pending if ents[k].result.status == FAILED]
    return out
