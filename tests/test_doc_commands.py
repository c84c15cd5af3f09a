"""Every shell command the docs show, as a user would paste it: README.md, CONTRIBUTING.md and docs/*.md, in code
blocks (fenced or indented) and in inline code. Each must parse in bash as written (with its <placeholders> filled
in: `outputs/<date>/<time>` is a path the reader fills); the cheap ones, which only read a run or train a couple of
hundred steps, also run, in a directory of their own, and must do what the page says next to them."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# What a command starts with: the programs the docs tell a reader to run.
PROGRAMS = {"python", "python3", "tensorboard", "bash", "pip", "source", ".venv/bin/python", ".venv/bin/pip"}
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


def commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) for each command on the page. Code blocks: a line of a fenced block, or of a block
    indented by four spaces. Inline code: a span, which may wrap over lines, outside the blocks. A command is one
    that starts with a program of PROGRAMS; the rest of a block is output (tables, progress lines, listings)."""
    found, prose, fenced = [], [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            prose.append("")
            continue
        block = line.strip() if fenced else line[4:] if re.match(r"    \S", line) else None
        if block is None:
            prose.append(line)
            continue
        prose.append("")
        if block.split(" ", 1)[0] in PROGRAMS:
            found.append((number, block))
    text = "\n".join(prose)
    for span in re.finditer(r"`([^`]+)`", text):
        command = " ".join(span[1].split())
        if command.split(" ", 1)[0] in PROGRAMS:
            found.append((text.count("\n", 0, span.start()) + 1, command))
    return found


ALL = [(page, number, command) for page in PAGES for number, command in commands(page)]


def test_the_docs_show_commands_in_each_form():
    """The extraction finds what it is for: README's install block, an indented command, inline commands, and one
    inline command that wraps over two lines (docs/tasks.md)."""
    shown = {(page.name, command) for page, _, command in ALL}
    assert ("README.md", "source .venv/bin/activate") in shown
    assert any(page == "README.md" and c.startswith("python3 -m venv .venv && ") for page, c in shown)
    assert any(page == "sweeps.md" and c.startswith("python scripts/summarize_sweep.py ") for page, c in shown)
    assert any(page == "tasks.md" and "'seed=range(10)'" in c and c.startswith("python scripts/train.py -m ")
               for page, c in shown)
    assert len(ALL) > 60


@pytest.mark.parametrize("page, number, command", ALL, ids=[f"{p.name}:{n}" for p, n, _ in ALL])
def test_parses_in_bash(page, number, command):
    filled = PLACEHOLDER.sub("X", command)
    parsed = subprocess.run(["bash", "-n", "-c", filled], capture_output=True, text=True)
    assert parsed.returncode == 0, f"{page.name}:{number}: {command}\n{parsed.stderr}"


def shown(page: str, command: str) -> str:
    """The command, checked to be on the page as it is run here (a command that left the docs leaves the test)."""
    assert command in {c for p, _, c in ALL if p.name == page}, f"{page} no longer shows {command!r}"
    return command


def run(script_runs, command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A `python scripts/NAME.py ARGS` command of the docs, as its words are, forked from the session's process that
    has made torch's imports (tests/script_runs.py)."""
    program, script, *args = shlex.split(command)
    assert program == "python" and script.startswith("scripts/"), command
    (result,) = script_runs.run(ROOT / script, [args], cwd, timeout=240)
    return result


def test_the_tour_trains_then_inspects_and_ablates_the_run(tmp_path, script_runs):
    """README's tour, step 1 and step 4, in an empty directory: the default config stops by step 200 with its
    sequences solved (the page: step 100 or 200, val/seq_acc 1.000); the inspector and the ablation read that run."""
    trained = run(script_runs, shown("README.md", "python scripts/train.py"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    learned = re.search(r"^Trained (\d+) steps in [\d.]+ s: val/loss \S+ · val/seq_acc (\S+)", trained.stdout, re.M)
    assert learned and int(learned[1]) <= 200 and learned[2] == "1.000", trained.stdout[-2000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*")  # outputs/<date>/<time>
    assert f"Run saved in {run_dir}\n" in trained.stdout

    inspect = shown("README.md", 'python scripts/inspect_run.py outputs/<date>/<time> --input "3 1 4 1 5 9 2 6"')
    inspected = run(script_runs, inspect.replace("<date>", run_dir.parent.name).replace("<time>", run_dir.name),
                    tmp_path)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    # The run solved reverse: the prediction is the input backwards, every token of it.
    assert re.search(r"^predicted(\s+·){7}\s+6\s+2\s+9\s+5\s+1\s+4\s+1\s+3$", inspected.stdout, re.M), inspected.stdout
    assert "answer: 8/8 tokens right" in inspected.stdout
    assert list((run_dir / "inspect").glob("attention-3_1_4_1_5_9_2_6.png"))

    ablated = run(script_runs, shown("tasks.md", "python scripts/ablate.py RUN_DIR").replace("RUN_DIR", str(run_dir)),
                  tmp_path)
    assert ablated.returncode == 0, ablated.stderr[-2000:]
    learned_row = re.search(r"^\s+learned\s+([\d.]+) / ([\d.]+)$", ablated.stdout, re.M)
    assert learned_row and float(learned_row[1]) == 1.0  # the run's own score, as trained
