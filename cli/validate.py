"""Check a dataset against the data contract; exit non-zero when it breaks it.

Reads:  config.data.path (or --path)/{users,follows,posts,engagements}
Writes: nothing
"""

from __future__ import annotations

import argparse

from inputs.contract import read_tables, validate_tables
from nearline.config import NearlineConfig


def _handle(args: argparse.Namespace, config: NearlineConfig) -> int:
    path = args.path or config.data.path
    report = validate_tables(read_tables(path))
    print(f"validating {path}")
    print(report.render())
    return 0 if report.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate")
    parser.add_argument("--path", help="dataset directory (default: data.path from the config)")
    parser.set_defaults(handler=_handle)
