"""irllrec_dist: a distributed trainer for IRLLRec (intent-aware LLM-augmented recommendation)."""

__version__ = "0.1.0"
