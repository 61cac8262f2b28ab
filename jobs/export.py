"""`nearline export KIND`: batch embedding and serving-table exports into the store (Spark)."""

from __future__ import annotations

import argparse

from jobs import export_content_embeddings, export_serving_tables, export_user_embeddings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    export_content_embeddings.register_export(kinds)
    export_user_embeddings.register_export(kinds)
    export_serving_tables.register_export(kinds)
