"""LLM pieces of the intent stage: prompt templates, the output parser, generation backends."""

from irllrec_dist.llm.backends import Backend, GenerationResult, Sampling, make_backend
from irllrec_dist.llm.parser import ParseResult, parse_output
from irllrec_dist.llm.prompts import PromptTemplate, load_template

__all__ = [
    "Backend",
    "GenerationResult",
    "Sampling",
    "make_backend",
    "ParseResult",
    "parse_output",
    "PromptTemplate",
    "load_template",
]
