"""Reading the outcome tables of docs/*-FAULTS.md, so a test can hold its table as data and
check that the page lists exactly the same cells."""

from __future__ import annotations

from pathlib import Path


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def fault_table(doc: Path) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """The first table whose header starts with ``fault``: its columns (backticks removed),
    its fault rows in order, and its cells by (fault, column)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if cells_of(line)[0].lower() == "fault")
    columns = [c.strip("`") for c in cells_of(lines[start])[1:]]
    assert set(cells_of(lines[start + 1])[0]) <= set("-: ")  # the separator row
    cells: dict[tuple[str, str], str] = {}
    faults: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = cells_of(line)
        fault = row[0].strip("`* ")
        faults.append(fault)
        assert len(row) == len(columns) + 1, line
        cells.update({(fault, column): text for column, text in zip(columns, row[1:], strict=True)})
    return columns, faults, cells
