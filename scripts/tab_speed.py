"""How fast the Attention tab is with many runs: one run's event file copied N times (each copy a run of its own,
named by a seed override), TensorBoard over them, and the tab driven in headless Chromium (Selenium): the time to
open it with every run drawn, to move the step slider, and to show the circuits.

    python scripts/tab_speed.py RUN_DIR [--runs 16]

Needs selenium (installed by the test extra: pip install -e '.[test]') and Chromium with its driver (Debian:
apt-get install -y chromium chromium-driver). Not part of the test suite.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the plain install (pip install -e .) has no selenium
    sys.exit("error: scripts/tab_speed.py drives Chromium through selenium, which is not installed: "
             "pip install -e '.[test]'")

from attnlab import tags
from attnlab.tensorboard_server import TensorBoardServer

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"]
STEP = "return document.body.dataset.step"  # the step whose frames are all on the page (set once drawn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with Attention frames")
    parser.add_argument("--runs", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attnlab-tab-speed-"))
    try:
        for i in range(args.runs):
            (work / f"seed={i}" / ".hydra").mkdir(parents=True)
            for events in args.run.glob("events.out.tfevents.*"):
                shutil.copy(events, work / f"seed={i}")
            (work / f"seed={i}" / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
        with TensorBoardServer(work, log=work / "tensorboard.log") as tb:
            def loaded(answer) -> bool:
                steps = [r["steps"] for r in (answer or {"runs": []})["runs"]]
                return len(steps) == args.runs and all(s == steps[0] for s in steps)

            runs = tb.wait_until(f"/data/plugin/{tags.PLUGIN}/runs", loaded, timeout=120)["runs"]
            time.sleep(2)  # TensorBoard may still be reading the last frames: let it settle
            steps = tb.get(f"/data/plugin/{tags.PLUGIN}/runs")["runs"][0]["steps"]
            options = webdriver.ChromeOptions()
            for flag in FLAGS + [f"--user-data-dir={work / 'chromium'}"]:
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                wait = WebDriverWait(driver, 120, poll_frequency=0.02)
                start = time.perf_counter()
                driver.get(f"{tb.url}/data/plugin_entry.html?name={tags.PLUGIN}")
                wait.until(lambda d: d.execute_script(STEP) == str(steps[-1]))
                cells = driver.execute_script("return document.querySelectorAll('td.cell').length")
                took = time.perf_counter() - start
                print(f"{len(runs)} runs of {len(steps)} frames, {cells} cells: open {took:.2f} s")
                moves = []
                for key, step in [(Keys.HOME, steps[0]), (Keys.ARROW_RIGHT, steps[1]), (Keys.ARROW_RIGHT, steps[2]),
                                  (Keys.END, steps[-1])]:
                    start = time.perf_counter()
                    driver.find_element(By.ID, "step").send_keys(key)
                    wait.until(lambda d: d.execute_script(STEP) == str(step))
                    moves.append(time.perf_counter() - start)
                print("step slider moves (first visit of each step):", ", ".join(f"{m:.2f} s" for m in moves))
                start = time.perf_counter()
                driver.find_element(By.ID, "circuits").click()
                heads = sum(r["layers"] * r["heads"] for r in runs)
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure[data-circuit]")) == 3 * heads)
                print(f"circuits of {heads} heads: {time.perf_counter() - start:.2f} s")
            finally:
                driver.quit()
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
