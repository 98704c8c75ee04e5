"""Running one ``tbps`` sub-command module on its own (``python -m models.train ...``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_subcommand(name: str, register_cli: Callable[[Any], Any],
                   argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tbps")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return args.func(args)
