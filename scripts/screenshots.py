"""Pictures of what a user sees, for the docs: TensorBoard's Attention, Images and HParams tabs in headless Chromium,
and the attention PNG and terminal output of scripts/inspect_run.py, all from real runs, written to docs/images/.

    python scripts/screenshots.py                 # trains a 4-run sweep and an induction run first (5-15 min)
    python scripts/screenshots.py SWEEP_DIR [--induction RUN_DIR]   # runs you already have

The sweep is reverse over model.heads=1,2 x model.positions=learned,none; the induction run is
`+experiment=induction` (2 layers). Needs selenium (the test extra: pip install -e '.[test]') and a Chromium with
its driver (Debian: apt-get install -y chromium chromium-driver). Not part of the test suite: tests/test_tensorboard_server.py and tests/test_plugin.py check the
same pages through TensorBoard's HTTP API and in a browser.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnlab import tags
from attnlab.inspection import CONFIG_FILE
from attnlab.tensorboard_server import TensorBoardServer, images_path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
FIXED = ["device=cpu", "data=reverse", "trainer.max_steps=600", "logging.images_every_n_steps=25",
         "logging.progress_bar=false"]
# Runs named by what differs only ("model.heads=2,model.positions=none"): TensorBoard lists them by their directory
# names. Without positions, reverse cannot find its anti-diagonal: the Attention tab shows the two side by side.
SWEEP = ["-m", "model.heads=1,2", "model.positions=learned,none", *FIXED,
         f"hydra.job.config.override_dirname.exclude_keys=[{','.join(o.split('=')[0] for o in FIXED)}]"]
INDUCTION = ["+experiment=induction", "device=cpu", "logging.progress_bar=false"]
INSPECTED = "model.heads=2,model.positions=learned"  # the sweep's run scripts/inspect_run.py is shown on
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


def settled(tb: TensorBoardServer, runs: int) -> None:
    """Waits until TensorBoard lists `runs` runs in the Attention tab and their frames stop growing (it reads event
    files in the background, a run's first frames before its last)."""
    path, before = f"/data/plugin/{tags.PLUGIN}/runs", None
    for _ in range(60):
        answer = tb.wait_until(path, lambda r: r and len(r["runs"]) == runs, timeout=60)
        if answer == before:
            return
        before = answer
        time.sleep(2)
    sys.exit(f"error: TensorBoard's Attention tab did not settle on {runs} runs: {before}")


def attention_tab(url: str, path: Path, profile: Path, circuits: bool = False, hover: str | None = None) -> None:
    """The Attention tab in TensorBoard's page, once every run shown is drawn at the last step; the window as tall
    as the tab's content. circuits: with the QK/OV circuits ticked; hover: a CSS selector of the cell to point at."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shutil.rmtree(profile, ignore_errors=True)
    options = webdriver.ChromeOptions()
    for flag in [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time")] + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 120, poll_frequency=0.1)
        driver.get(f"{url}/#{tags.PLUGIN}")
        driver.switch_to.frame(wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0])
        wait.until(lambda d: d.execute_script("return document.body.dataset.step !== undefined"))
        if circuits:
            driver.find_element(By.ID, "circuits").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure[data-circuit]"))
        # The window grown until the tab's iframe needs no scrolling (it fills the page below TensorBoard's bar).
        for _ in range(5):
            overflow = driver.execute_script(
                "const d = document.documentElement; return d.scrollHeight - d.clientHeight")
            if overflow <= 0:
                break
            driver.switch_to.default_content()
            size = driver.get_window_size()
            driver.set_window_size(size["width"], size["height"] + overflow)
            time.sleep(1)  # the page lays itself out again at the new size
            driver.switch_to.frame(driver.find_element(By.CSS_SELECTOR, "iframe"))
        if hover:
            ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, hover)).perform()
        driver.switch_to.default_content()
        driver.save_screenshot(str(path))
        print(f"wrote {path}")
    finally:
        driver.quit()


def trained(overrides: list[str], dir_key: str, directory: Path) -> Path:
    """scripts/train.py with these overrides, into `directory` (a run's or a sweep's, by `dir_key`)."""
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *overrides, f"{dir_key}={directory}"]
    print("training:", " ".join(command[1:]))
    subprocess.run(command, check=True, cwd=ROOT)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="?", type=Path, help="a sweep directory or a run (default: train a small sweep)")
    parser.add_argument("--induction", type=Path, help="a +experiment=induction run (default: train one)")
    args = parser.parse_args()
    browser = chromium()
    work = Path(tempfile.mkdtemp(prefix="attnlab-screenshots-"))
    runs = args.runs or trained(SWEEP, "hydra.sweep.dir", work / "sweep")
    induction = args.induction or trained(INDUCTION, "hydra.run.dir", work / "induction")
    run_dirs = sorted(p.parent.parent for p in runs.rglob(str(CONFIG_FILE)))
    if not run_dirs:
        sys.exit(f"error: {runs} holds no run (no {CONFIG_FILE} below it)")
    OUT.mkdir(parents=True, exist_ok=True)

    # The inspect picture and terminal output, for the sweep's run with 2 heads and learned positions.
    inspected = next((d for d in run_dirs if d.name == INSPECTED), run_dirs[-1])
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
        settled(tb, len(run_dirs))
        attention_tab(tb.url, OUT / "tensorboard_attention_sweep.png", profile)
    with TensorBoardServer(induction, log=work / "tensorboard-induction.log") as tb:
        settled(tb, 1)
        # Pointing at layer 1's first target cell: the induction head's hover text.
        attention_tab(tb.url, OUT / "tensorboard_attention.png", profile, circuits=True,
                      hover="figure[data-layer='1'] td.cell.target")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
