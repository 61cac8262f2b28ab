"""`nearline import FORMAT DIR --out PATH`: adapters from public formats into the data contract."""

from __future__ import annotations

import argparse

from jobs import import_tweeteval, import_twitter1516


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    tweeteval = formats.add_parser("tweeteval", help="TweetEval emoji text/label files")
    tweeteval.add_argument("directory")
    tweeteval.add_argument("--out", default="data/tweeteval", help="output dataset directory")
    tweeteval.set_defaults(handler=import_tweeteval.handle)
    twitter = formats.add_parser("twitter1516", help="Twitter15/16 propagation cascades")
    twitter.add_argument("directory")
    twitter.add_argument("--out", default="data/twitter15", help="output dataset directory")
    twitter.set_defaults(handler=import_twitter1516.handle)
