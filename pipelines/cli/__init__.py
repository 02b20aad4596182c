"""The `duchkit` command line.

One module per command, each with `register(subparsers)`:

    duchkit run [--config FILE] [--out DIR] [--device auto|cpu|cuda] [--dry-run] [--lenient]
    duchkit inspect DIR
    duchkit export DIR --format captions-json|jsonl|csv [--stage NAME ...] [-o FILE]
    duchkit augment-text | augment-images | embed | study | train | evaluate | search ...

Commands parse options and print; the work is done by library functions (pipelines.runner,
.study, .training, .evaluation, .search) that the tests and benchmarks call directly. Every
error a user can cause (bad config, bad dataset, missing model) ends with a one-paragraph
message and exit code 2, never a traceback. Building the parser imports neither torch nor
transformers, so `duchkit --help` is instant.
"""
from __future__ import annotations

import argparse
import errno
import sys

from duchkit.pipelines.cli import (augment_images, augment_text, embed, evaluate, export,
                                   inspect_folder, run, search, study, train)
from duchkit.pipelines.engines import EngineUnavailable
from duchkit.pipelines.readers import DatasetError
from duchkit.pipelines.stage import ConfigError
from duchkit.pipelines.version import __version__

EXIT_USAGE = 2
ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                      errno.ENOTDIR, errno.EISDIR}
COMMANDS = (run, inspect_folder, export, augment_text, augment_images, embed, study, train,
            evaluate, search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duchkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"duchkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `duchkit` alone runs the demo: the one thing a newcomer wants to see work.
    args = build_parser().parse_args(argv or ["run"])
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except (ConfigError, DatasetError, FileNotFoundError, EngineUnavailable) as exc:
        print(f"duchkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRORS:
            raise
        # a full disk, a read-only or foreign folder: the file and the reason, no traceback;
        # what was written is complete shards only, and a rerun resumes from them
        where = exc.filename or "the output folder"
        print(f"duchkit {args.command}: error: cannot write {where}: "
              f"{exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}", file=sys.stderr)
        return EXIT_USAGE
