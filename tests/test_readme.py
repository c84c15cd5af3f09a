"""The README's two commands are what CI runs, and every relative link in the docs leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def ci_test_command() -> str:
    """The line of .ci/run that runs the tests. Found by what it does rather than by being the only command, so
    that setup lines (a system package for the screenshots, say) may come before it."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line.endswith("python -m pytest") and not line.startswith("#")]
    assert len(commands) == 1, commands
    return commands[0]


def test_ci_runs_the_readme_test_command():
    command = ci_test_command()
    assert command in (ROOT / "README.md").read_text().splitlines()  # word for word, a line of its own
    assert command.startswith("python3 -m venv .venv") and "pip install -q torch==2.13.0" in command


def test_readme_install_and_train_command_installs_as_ci_does():
    """Command 1 is command 2 with the plain install and a training run instead of the tests."""
    train = ci_test_command().replace("-e '.[test]'", "-e .").replace("python -m pytest", "python scripts/train.py")
    assert train in (ROOT / "README.md").read_text().splitlines(), train


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (backticks too), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(text: str) -> str:
    """The text without code: fenced blocks, indented blocks and inline spans (`[dim, d_head]` is no link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"^    .*$", "", text, flags=re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(page.read_text()), flags=re.M)}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", prose(page.read_text())) if not re.match(r"\w+:", m.group(1))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for link in links(page):
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and (target.suffix != ".md" or fragment not in anchors(target)):
            broken.append(f"{link}: no heading #{fragment} in {target.relative_to(ROOT)}")
    assert not broken, broken


def test_anchors_are_githubs():
    assert anchor("Alignment: how close attention comes to the target") == "alignment-how-close-attention-comes-to-the-target"
    assert anchor("Reliability: resume, errors, exit codes") == "reliability-resume-errors-exit-codes"
    assert anchor("`summary.csv` and friends") == "summarycsv-and-friends"


def test_inspect_page_shows_what_the_screenshot_script_printed():
    """docs/inspect.md's terminal example is scripts/screenshots.py's docs/images/inspect_terminal.txt, verbatim."""
    shown = (ROOT / "docs" / "inspect.md").read_text()
    printed = (ROOT / "docs" / "images" / "inspect_terminal.txt").read_text().strip("\n")
    assert printed in shown, "docs/inspect.md's terminal example is not docs/images/inspect_terminal.txt: copy it over"


def layout() -> str:
    """CONTRIBUTING's layout block: the indented lines under '## Layout'."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split("## Layout\n\n")[1].split("\n\n")[0]
    return " ".join(section.split())


def test_contributing_layout_names_every_script():
    missing = [p.name for p in sorted((ROOT / "scripts").glob("*.py")) if p.name not in layout()]
    assert not missing, f"CONTRIBUTING's layout does not name scripts/{missing}"


def test_contributing_warns_that_ci_removes_the_environment():
    """.ci/run starts from no .venv: whoever runs it as a check loses the one they work in, so the page says so."""
    assert "rm -rf .venv" in (ROOT / ".ci" / "run").read_text()
    line = next(line for line in (ROOT / "CONTRIBUTING.md").read_text().splitlines() if "bash .ci/run" in line)
    assert "removes .venv" in line, line


@pytest.mark.parametrize("script", ["tab_speed.py", "screenshots.py"])
def test_scripts_that_drive_a_browser_say_they_need_selenium(script):
    """The plain install (pip install -e .) has no selenium: the docstring says where it comes from."""
    import ast

    docstring = ast.get_docstring(ast.parse((ROOT / "scripts" / script).read_text()))
    assert "selenium" in docstring and ".[test]" in docstring


def test_sweeps_page_gives_the_joblib_launchers_own_default():
    joblib = pytest.importorskip("hydra_plugins.hydra_joblib_launcher.config")
    text = " ".join((ROOT / "docs" / "sweeps.md").read_text().split())
    said = re.search(r"`hydra/launcher=joblib` runs `hydra.launcher.n_jobs` of them side by side \(default (-?\d+)", text)
    assert said, "docs/sweeps.md no longer says joblib's default n_jobs where this test looks"
    assert int(said[1]) == joblib.JobLibLauncherConf().n_jobs


def test_no_page_points_outside_the_repository():
    """The article the attention layer follows is described in README, not pointed at in a folder beside the clone,
    which a reader of the repository does not have."""
    code = [path for folder in ("src", "scripts", "tests") for path in sorted((ROOT / folder).rglob("*.py"))]
    outside = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in [*PAGES, *code] if path != Path(__file__)
               for line in path.read_text().splitlines() if "../shared" in line]
    assert not outside, outside


def test_readme_describes_the_article_and_its_example_as_the_test_runs_it():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert '"注意力机制"' in readme  # the article's title
    test = (ROOT / "tests" / "test_attention.py").read_text()
    example = re.search(r"`(\[\[0\.1, .*?\]\])`", readme)[1]
    assert f"torch.tensor({example})" in test


def test_cpu_only_install_pins_the_version_the_commands_pin():
    """README's CPU-only line installs the torch version commands 1 and 2 (and CI) pin, so that their pin is already
    met by the CPU build and they run unchanged after it."""
    pinned = re.search(r"pip install -q (torch==[\d.]+) ", ci_test_command())[1]
    cpu = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines() if "download.pytorch.org/whl/cpu" in line)
    assert cpu == f"python3 -m venv .venv && .venv/bin/pip install {pinned} --index-url https://download.pytorch.org/whl/cpu"
