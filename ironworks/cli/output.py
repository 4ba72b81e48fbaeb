"""Rendering for the operator commands: rich tables or indented JSON on stdout, messages on stderr.

With ``-f json`` stdout carries exactly one JSON document and nothing else, so it can be piped to
``jq``; notes, progress and errors always go to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


class OutputFormat(StrEnum):
    """How a command prints what it fetched."""

    TABLE = "table"
    JSON = "json"


#: (field in the resource, column heading)
Column = tuple[str, str]


def stdout_console() -> Console:
    """A console on the current stdout (made per call, so a test runner's captured stream is used)."""
    return Console(highlight=False)


def stderr_console() -> Console:
    """A console on the current stderr for notes, progress and errors; long lines are not hard-wrapped."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def format_value(value: object) -> str:
    """One cell: compact JSON for dicts and lists, ``None`` spelled out, everything else as text."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def print_json(data: object) -> None:
    """Indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2))


def print_resource(resource: Mapping[str, Any], fmt: OutputFormat) -> None:
    """One resource: a Field/Value table, or the resource as JSON."""
    if fmt is OutputFormat.JSON:
        print_json(dict(resource))
        return
    table = Table("Field", "Value", show_lines=False)
    for field, value in resource.items():
        table.add_row(Text(field), Text(format_value(value)))
    stdout_console().print(table)


def print_list(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], fmt: OutputFormat) -> None:
    """Several resources: one row each with the given columns, or the resources as a JSON list."""
    if fmt is OutputFormat.JSON:
        print_json([dict(row) for row in rows])
        return
    table = Table(*(heading for _, heading in columns))
    for column in table.columns:
        # Fold instead of truncating: a clipped UUID is worse than a wrapped one.
        column.overflow = "fold"
    for row in rows:
        table.add_row(*(Text(format_value(row.get(field))) for field, _ in columns))
    stdout_console().print(table)


def print_note(message: str) -> None:
    """A confirmation or progress note on stderr."""
    stderr_console().print(Text(message))


def print_error(message: str) -> None:
    """An error on stderr, prefixed so it stands out in scripts' logs."""
    stderr_console().print(Text.assemble(("Error: ", "bold red"), message))
