"""The parts of the docs pages that scripts write from runs (scripts/experiments.py, length_study.py, rasp_suite.py):
a table between a page's two marker comments, `<!-- NAME:start -->` and `<!-- NAME:end -->`, the rest as it was."""

import sys
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def check(page: Path, name: str) -> None:
    """The page has the markers, else one line and exit 2 (before a script writes anything)."""
    start, end = markers(name)
    text = page.read_text()
    if start not in text or end not in text:
        print(f"error: {page} has no {start} ... {end} markers to write the table between", file=sys.stderr)
        sys.exit(2)


def write(page: Path, name: str, table: str) -> None:
    """`table` between the page's markers, in place of what was there."""
    check(page, name)
    start, end = markers(name)
    head, rest = page.read_text().split(start, 1)
    page.write_text(f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}")
    print(f"table written into {page}")
