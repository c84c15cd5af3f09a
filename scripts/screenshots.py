"""Pictures of what a user sees, for the README: TensorBoard's Images and HParams tabs in headless Chromium, and the
attention PNG and terminal output of scripts/inspect_run.py, all from real runs, written to docs/images/.

    python scripts/screenshots.py                 # trains a small sweep first (reverse, model.heads=1,2; 1-3 min)
    python scripts/screenshots.py SWEEP_DIR       # runs you already have (a sweep directory, or one run)

Needs a Chromium (Debian: apt-get install -y chromium). Not part of the test suite:
tests/test_tensorboard_server.py checks the same data through TensorBoard's HTTP API without a browser.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from attnlab import tags
from attnlab.inspection import CONFIG_FILE
from attnlab.tensorboard_server import TensorBoardServer, images_path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
FIXED = ["device=cpu", "data=reverse", "trainer.max_steps=600", "logging.images_every_n_steps=25",
         "logging.progress_bar=false"]
# Runs named by what differs only ("model.heads=2"): TensorBoard lists them by their directory names.
SWEEP = ["-m", "model.heads=1,2", *FIXED,
         f"hydra.job.config.override_dirname.exclude_keys=[{','.join(o.split('=')[0] for o in FIXED)}]"]
INSPECT_INPUT = "3 1 4 1 5 9 2 6"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
                  "--window-size=1400,1000", "--virtual-time-budget=15000"]  # virtual time: let the page render
# The HParams table is wide: render a larger page at a smaller scale so that the metric columns fit in.
HPARAMS_FLAGS = ["--window-size=2000,1000", "--force-device-scale-factor=0.7"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("error: no chromium found on PATH (Debian: apt-get install -y chromium)")


def screenshot(browser: str, url: str, path: Path, profile: Path, flags: list[str] = ()) -> None:
    """One page, rendered by a fresh browser profile (no state carried between shots)."""
    shutil.rmtree(profile, ignore_errors=True)
    subprocess.run([browser, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="?", type=Path, help="a sweep directory or a run (default: train a small sweep)")
    args = parser.parse_args()
    browser = chromium()
    work = Path(tempfile.mkdtemp(prefix="attnlab-screenshots-"))
    runs = args.runs
    if runs is None:
        runs = work / "sweep"
        command = [sys.executable, str(ROOT / "scripts" / "train.py"), *SWEEP, f"hydra.sweep.dir={runs}"]
        print("training:", " ".join(command[1:]))
        subprocess.run(command, check=True, cwd=ROOT)
    run_dirs = sorted(p.parent.parent for p in runs.rglob(str(CONFIG_FILE)))
    if not run_dirs:
        sys.exit(f"error: {runs} holds no run (no {CONFIG_FILE} below it)")
    OUT.mkdir(parents=True, exist_ok=True)

    # The inspect picture and terminal output, for the run with the most heads (the last of the sweep).
    inspected = run_dirs[-1]
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_run.py"), str(inspected), "--input",
                             INSPECT_INPUT, "--out", str(work / "inspect")], check=True, capture_output=True, text=True)
    (OUT / "inspect_terminal.txt").write_text(result.stdout.split("\nwrote ")[0].replace(str(inspected), "RUN_DIR"))
    shutil.copy(work / "inspect" / f"attention-{'_'.join(INSPECT_INPUT.split())}.png", OUT / "inspect_attention.png")
    print(f"wrote {OUT / 'inspect_attention.png'} and {OUT / 'inspect_terminal.txt'} (run {inspected})")

    with TensorBoardServer(runs, "--samples_per_plugin", "images=1000", log=work / "tensorboard.log") as tb:
        names = tb.wait_until("/data/runs", lambda r: len(r) == len(run_dirs), timeout=60)
        assert names and len(names) == len(run_dirs), f"TensorBoard lists {names}, expected {len(run_dirs)} runs"
        # Wait until TensorBoard has read the last run's images to its last frame.
        last_run = names[-1]
        tb.wait_until(images_path(tags.weight(0, tags.WEIGHTS[-1]), last_run), lambda f: len(f) > 1, timeout=60)
        profile = work / "chromium"
        screenshot(browser, f"{tb.url}/#images&tagFilter=attention", OUT / "tensorboard_images.png", profile)
        screenshot(browser, f"{tb.url}/#hparams", OUT / "tensorboard_hparams.png", profile, HPARAMS_FLAGS)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
