"""The ``irllrec`` command: one sub-command per stage, each running that stage's ``main(argv)``.

    irllrec train --config configs/irllrec.yaml train.seed=1
    irllrec train --help            # the config keys train reads, with defaults and meanings
    irllrec train --print-config    # the resolved config as YAML; nothing runs

``irllrec STAGE ...`` and ``python -m irllrec_dist.STAGE ...`` (and ``python -m irllrec_dist
STAGE ...``) are the same program: the same arguments, the same one-line errors with exit code 2
(cli.run_main).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one line for the listing). Modules are imported only when their command runs:
# `irllrec --help` does not load torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("irllrec_dist.ingest", "raw files -> the validated, canonical Parquet dataset"),
    "intents": ("irllrec_dist.intents", "an LLM writes a profile and intents for items and users"),
    "embed": ("irllrec_dist.embed", "text -> sentence vectors for the text tower"),
    "train": ("irllrec_dist.train", "train a run (LightGCN, RLMRec-Con, IRLLRec), then test its best checkpoint"),
    "tune": (
        "irllrec_dist.tune",
        "choose the text losses' weights on validation (Ray Tune; LightGCN always a candidate)",
    ),
    "evaluate": ("irllrec_dist.evaluate", "full-ranking metrics of a trained run and its top-K export"),
    "pipeline": ("irllrec_dist.pipeline", "[synthetic data] -> ingest -> [intents] -> [embed] -> train -> evaluate"),
    "report": ("irllrec_dist.report", "the runs under a run root as a results table, and --plot pictures"),
    "bench": ("irllrec_dist.bench", "benchmarks (samplers, training throughput, steps, LLM backends)"),
    "config-doc": ("irllrec_dist.config", "the configuration reference (docs/config.md) on stdout"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS) + 2
    lines = ["usage: irllrec COMMAND [--help] [--config PRESET.yaml ...] [section.key=value ...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}{what}" for name, (_, what) in COMMANDS.items()]
    lines += [
        "",
        "`irllrec COMMAND --help` lists a stage's arguments and the config keys it reads;",
        "`--print-config` prints the resolved config and exits; `--debug` adds tracebacks to errors.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"irllrec: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    from irllrec_dist import cli

    module = importlib.import_module(COMMANDS[name][0])
    if name == "config-doc":
        return module.main(rest or ["--markdown"])
    cli.PROG = "irllrec"  # usage lines say `irllrec train`, not `python -m irllrec_dist.train`
    try:
        return module.main(rest)
    finally:
        cli.PROG = None


if __name__ == "__main__":
    sys.exit(main())
