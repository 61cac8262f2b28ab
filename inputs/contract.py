"""The input data contract (users, follows, posts, engagements) and its validator.

The validator works on Arrow tables (no JVM): it reads only the columns it
checks, so it runs on the driver for datasets up to a few hundred million
engagement rows. Every problem is reported with table, column, count and one
example row, all at once, so a producer fixes its export in one round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

TABLES = ("users", "follows", "posts", "engagements")
# The events that say a user wanted a post (an impression alone does not): the ranker's task labels,
# pooled user interests, serving's recent lists and the held-out truth of the evaluations all use this set.
POSITIVE_EVENTS = ("like", "reply", "repost")
EVENTS = ("impression", *POSITIVE_EVENTS)

# Column -> Spark DDL type. The single source for generators, adapters and the validator.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "users": {"user_id": "long", "created_at": "timestamp", "country": "string", "language": "string",
              "is_verified": "boolean"},
    "follows": {"follower_id": "long", "followee_id": "long", "created_at": "timestamp"},
    "posts": {"post_id": "long", "author_id": "long", "text": "string", "created_at": "timestamp",
              "has_media": "boolean", "text_length": "int"},
    "engagements": {"user_id": "long", "post_id": "long", "event": "string", "ts": "timestamp"},
}
TABLE_SCHEMAS_DDL = {table: ", ".join(f"{c} {t}" for c, t in cols.items()) for table, cols in TABLE_COLUMNS.items()}

_TYPE_CHECKS = {
    "long": (pa.types.is_int64, "int64"),
    "int": (pa.types.is_integer, "an integer type"),
    "string": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
    "boolean": (pa.types.is_boolean, "bool"),
    "timestamp": (pa.types.is_timestamp, "timestamp"),
}
PRIMARY_KEYS = {"users": ("user_id",), "posts": ("post_id",), "follows": ("follower_id", "followee_id")}
FOREIGN_KEYS = [  # (table, column, referenced table, referenced column)
    ("follows", "follower_id", "users", "user_id"),
    ("follows", "followee_id", "users", "user_id"),
    ("posts", "author_id", "users", "user_id"),
    ("engagements", "user_id", "users", "user_id"),
    ("engagements", "post_id", "posts", "post_id"),
]
NOT_NULL = {
    "users": ("user_id", "created_at"),
    "follows": ("follower_id", "followee_id"),
    "posts": ("post_id", "author_id", "created_at"),
    "engagements": ("user_id", "post_id", "event", "ts"),
}


@dataclass(frozen=True)
class Problem:
    table: str
    column: str
    check: str
    count: int
    example: dict[str, Any] | None = None

    def __str__(self) -> str:
        example = f"; e.g. {json.dumps(self.example, default=str)}" if self.example else ""
        return f"{self.table}.{self.column}: {self.check} ({self.count:,} rows){example}"


@dataclass
class ContractReport:
    row_counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"  {table:<12} {count:>12,} rows" for table, count in self.row_counts.items()]
        if self.ok:
            lines.append("contract OK")
        else:
            lines.append(f"contract FAILED: {len(self.problems)} problem(s)")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def _example(table: pa.Table, mask: pa.Array) -> dict[str, Any] | None:
    rows = table.filter(mask).slice(0, 1).to_pylist()
    return rows[0] if rows else None


def _check_schema(name: str, table: pa.Table, report: ContractReport) -> set[str]:
    """Report missing and mistyped columns; return the columns safe to check further."""
    usable = set()
    for column, ddl_type in TABLE_COLUMNS[name].items():
        if column not in table.column_names:
            report.problems.append(Problem(name, column, "missing column", table.num_rows))
            continue
        is_ok, expected = _TYPE_CHECKS[ddl_type]
        actual = table.schema.field(column).type
        if not is_ok(actual):
            report.problems.append(Problem(name, column, f"wrong type {actual}, expected {expected}", table.num_rows))
            continue
        usable.add(column)
    return usable


def validate_tables(tables: dict[str, pa.Table]) -> ContractReport:
    """Check the four contract tables; problems are collected, never raised."""
    report = ContractReport()
    usable: dict[str, set[str]] = {}
    for name in TABLES:
        if name not in tables:
            report.problems.append(Problem(name, "*", "missing table", 0))
            usable[name] = set()
            continue
        report.row_counts[name] = tables[name].num_rows
        usable[name] = _check_schema(name, tables[name], report)

    for name, columns in NOT_NULL.items():
        for column in columns:
            if column in usable[name]:
                nulls = pc.is_null(tables[name][column])
                count = pc.sum(nulls).as_py() or 0
                if count:
                    report.problems.append(Problem(name, column, "null values", count, _example(tables[name], nulls)))

    for name, key in PRIMARY_KEYS.items():
        if not set(key) <= usable[name] or tables[name].num_rows == 0:
            continue
        grouped = tables[name].group_by(list(key)).aggregate([([], "count_all")])
        dupes = grouped.filter(pc.greater(grouped["count_all"], 1))
        if dupes.num_rows:
            extra = pc.sum(pc.subtract(dupes["count_all"], 1)).as_py()
            example = {k: dupes[k][0].as_py() for k in key}
            report.problems.append(Problem(name, "+".join(key), "duplicate key", extra, example))

    for name, column, ref_table, ref_column in FOREIGN_KEYS:
        if column not in usable[name] or ref_column not in usable[ref_table]:
            continue
        values = tables[name][column]
        dangling = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=tables[ref_table][ref_column])))
        count = pc.sum(dangling).as_py() or 0
        if count:
            report.problems.append(Problem(name, column, f"dangling reference to {ref_table}.{ref_column}",
                                           count, _example(tables[name], dangling)))

    if "event" in usable["engagements"]:
        unknown = pc.invert(pc.is_in(tables["engagements"]["event"], value_set=pa.array(EVENTS)))
        unknown = pc.fill_null(unknown, False)
        count = pc.sum(unknown).as_py() or 0
        if count:
            report.problems.append(Problem("engagements", "event", f"unknown event, expected one of {list(EVENTS)}",
                                           count, _example(tables["engagements"], unknown)))

    _check_time_order(tables, usable, report, "engagements", "post_id", "ts", "posts", "post_id", "created_at",
                      "engagement before the post was created")
    _check_time_order(tables, usable, report, "posts", "author_id", "created_at", "users", "user_id", "created_at",
                      "post before its author's account was created")
    return report


def _check_time_order(tables, usable, report, name, fk, ts_column, ref_table, ref_key, ref_ts, message) -> None:
    if not ({fk, ts_column} <= usable[name] and {ref_key, ref_ts} <= usable[ref_table]):
        return
    table, ref = tables[name], tables[ref_table]
    if table.num_rows == 0 or ref.num_rows == 0:
        return
    ref_keys = ref[ref_key].to_numpy(zero_copy_only=False)
    order = np.argsort(ref_keys, kind="stable")
    sorted_keys = ref_keys[order]
    ref_times = ref[ref_ts].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)[order]
    keys = table[fk].to_numpy(zero_copy_only=False)
    times = table[ts_column].cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    found = sorted_keys[position] == keys
    before = found & (times < ref_times[position])
    count = int(before.sum())
    if count:
        report.problems.append(Problem(name, ts_column, f"{message} ({ref_table}.{ref_ts})", count,
                                       _example(table, pa.array(before))))


def read_tables(data_path: str) -> dict[str, pa.Table]:
    """Read the contract tables from data_path/<table>/ (Parquet); only contract columns are loaded."""
    root = Path(data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {data_path}")
    tables = {}
    for name in TABLES:
        path = root / name
        if not path.exists():
            continue
        try:
            dataset = ds.dataset(str(path), format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"table {name} at {path} is not readable Parquet: {exc}") from exc
        columns = [c for c in TABLE_COLUMNS[name] if c in dataset.schema.names]
        tables[name] = dataset.to_table(columns=columns)
    return tables
