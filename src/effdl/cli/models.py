"""`effdl models`: every registered model name with its parameter count."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.models import describe_models
    from effdl.models.catalog import PARAMETERS_COUNTED

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="effdl models (10 classes, 32x32); any torchvision model as tv:NAME",
                  caption=f"parameters: {PARAMETERS_COUNTED}")
    table.add_column("name")
    table.add_column("parameters", justify="right")
    table.add_column("what it is")
    for row in rows:
        table.add_row(row["name"], f"{row['params']:,}", row.get("summary", ""))
    Console().print(table)
    return 0
