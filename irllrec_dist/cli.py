"""One error path for every stage's ``main()``.

Each stage builds its argparse parser and hands it, with the function that does the work, to
``run_main``. Errors the user can act on -- bad input files, bad config (unknown keys, bad
values), storage that is missing, corrupt, unreachable or forbidden, a checkpoint that does not
match the run root or cannot be read, a training run that diverged -- end as ONE line on stderr,

    <stage>: <message>

and exit code 2, with no traceback unless ``--debug`` is given (then the traceback is printed
before that line). Anything else is a bug: its traceback is kept and the exit code is 1.

A stage whose parser has the config arguments (``config.add_config_args``) also gets, here, the
config keys it reads in its ``--help`` (with defaults and meanings) and ``--print-config``: the
resolved config as YAML, exit code 0, nothing run. The ``irllrec`` command (console.py) runs the
same ``main(argv)`` of each stage, so both forms behave alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable

EXIT_USER_ERROR = 2

# What usage lines call the program: "irllrec" when the console script dispatches (console.py sets
# it), else "python -m irllrec_dist.<stage>".
PROG: str | None = None


class StageError(Exception):
    """An error the user can act on that is not an input, config or storage error."""


class CheckpointError(StageError, ValueError):
    """A checkpoint that cannot be read, holds non-finite weights, or does not belong to the
    current config and run root (the message names what differs). A ValueError too, as the
    resume refusals that became this were."""


class NonFiniteLoss(StageError):
    """A training loss term became NaN or infinite (the message names epoch, step and term)."""


def add_debug_arg(parser: argparse.ArgumentParser, default=False) -> None:
    """``--debug``: print the traceback of a user error too. Sub-parsers get ``default=SUPPRESS``
    so that a value given before the sub-command is not reset by the sub-parser's default."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an input/config/storage error, print the traceback as well as the one-line message",
    )


def _user_error_types() -> tuple[type, ...]:
    from irllrec_dist.config import ConfigError
    from irllrec_dist.data.readers import InputError
    from irllrec_dist.storage import CorruptOutput, OutputMissing

    # OSError covers FileNotFoundError, PermissionError, TimeoutError, ConnectionError, a full
    # disk, and pyarrow's S3 errors (ArrowIOError is OSError).
    return InputError, ConfigError, CorruptOutput, OutputMissing, StageError, OSError


def _is_foreign_storage_error(e: BaseException) -> bool:
    """botocore / aiobotocore / s3fs errors (matched by module: botocore need not be installed)."""
    return any(c.__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs") for c in type(e).__mro__)


def _is_ray_wrapper(e: BaseException) -> bool:
    return any(c.__module__.startswith("ray.") for c in type(e).__mro__)


def _causes(e: BaseException, depth: int = 0):
    """``e``, or for a Ray error what it wraps first: a task's original exception (``cause``),
    Ray Train's worker-group failures (``worker_failures``), a controller failure, ``__cause__``.
    Other exceptions are taken as they are: a bug raised while handling a user error stays a bug."""
    if e is None or not isinstance(e, BaseException) or depth > 8:
        return
    if _is_ray_wrapper(e):
        inner = [getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            inner[1:1] = [failures[k] for k in sorted(failures)]
        for x in inner:
            if x is not None and x is not e:
                yield from _causes(x, depth + 1)
    yield e


def user_error(e: BaseException) -> BaseException | None:
    """The user error ``e`` is or wraps (e.g. raised on a Ray Train worker), or None for a bug."""
    kinds = _user_error_types()
    for x in _causes(e):
        if isinstance(x, kinds) or _is_foreign_storage_error(x):
            return x
    return None


def one_line(e: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ' | '), prefixed with
    its kind where the message alone would not say it (a bare OS or S3 client message)."""
    from irllrec_dist.data.readers import InputError
    from irllrec_dist.storage import CorruptOutput, OutputMissing

    msg = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
    name = type(e).__name__
    if isinstance(e, InputError):
        return f"bad input: {msg}"
    if isinstance(e, (CorruptOutput, OutputMissing)):
        return msg or name
    if isinstance(e, OSError) or _is_foreign_storage_error(e):  # "[Errno 13] ...", "timed out", ...
        return f"{name}: {msg}" if msg else name
    return msg or name


def run_main(
    stage: str,
    parser: argparse.ArgumentParser,
    fn: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """Parse ``argv`` (``--debug`` is added here), run ``fn(args)`` and turn user errors into one
    line ``<stage>: <message>`` on stderr and exit code 2. Bugs propagate with their traceback
    (exit code 1 from the interpreter)."""
    add_debug_arg(parser)
    _describe(stage, parser)
    args = parser.parse_args(argv)
    if getattr(args, "print_config", False):
        fn = _print_config
    try:
        rc = fn(args)
    except Exception as e:  # noqa: BLE001 -- classified below; bugs are re-raised untouched
        err = user_error(e)
        if err is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        print(f"{stage}: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0 if rc is None else int(rc)


def config_main(
    stage: str,
    doc: str | None,
    work: Callable,
    argv: list[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The ``main()`` of a stage configured by ``--config`` presets and ``key=value`` overrides:
    the config is loaded and validated once, ``work(cfg, args)`` runs, what it returns (unless
    None) is printed as JSON; errors as in ``run_main``. ``add_args`` adds the stage's own flags."""
    from irllrec_dist.config import add_config_args, load_config

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    if add_args is not None:
        add_args(parser)

    def body(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        out = work(load_config(args.config, args.overrides), args)
        if out is not None:
            print(json.dumps(out, indent=1))
        return 0

    return run_main(stage, parser, body, argv)


def _describe(stage: str, parser: argparse.ArgumentParser) -> None:
    """Name the program as it was called, and list the stage's config keys under its --help."""
    if PROG is not None:
        parser.prog = f"{PROG} {stage}"
    elif parser.prog == os.path.basename(sys.argv[0] or ""):  # argparse's default: "train.py"
        parser.prog = f"python -m irllrec_dist.{stage}"
    if getattr(parser, "irllrec_config_args", False):
        from irllrec_dist.config import help_text

        width = max(80, min(shutil.get_terminal_size((110, 24)).columns, 140))
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the key table's layout
        parser.epilog = "\n\n".join(p for p in (parser.epilog, help_text(stage, width)) if p)


def _print_config(args: argparse.Namespace) -> int:
    from irllrec_dist.config import config_yaml, load_config

    sys.stdout.write(config_yaml(load_config(args.config, args.overrides)))
    return 0
