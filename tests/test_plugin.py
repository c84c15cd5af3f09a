"""The Attention tab (TensorBoard plugin "attnlab") on a real TensorBoard over a real short run.

Over HTTP, what the tab's page asks: the plugin is listed, its runs, a frame, the circuits (checked against the
checkpoint's weights), and a run without frames is left out or answered 404, never a server error; a TensorBoard
with no frames at all has the tab inactive. Then in a real browser (Selenium + headless Chromium, skipped where none
is installed): the tab opens in TensorBoard's page, shows the labels and the cells, hovers, and the step slider
changes the frame. Beside them: a default run's frame is a few KB, and HParams lists the keys a sweep varies first."""

import json
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from attnlab import heads, hparams, tags
from attnlab.alignment import alignment
from attnlab.tensorboard_plugin import plugin
from attnlab.tensorboard_server import TensorBoardServer
from conftest import ROOT, TINY_RUN

STEPS, IMAGE_EVERY = 24, 2  # conftest.TINY_RUN
FRAMES = list(range(0, STEPS + 1, IMAGE_EVERY))
LAYERS, HEADS, N = 2, 2, 4  # reverse of data.seq_len=4: a stream of 2n-1 = 7 positions
POSITIONS = 2 * N - 1
TIMEOUT = 60  # seconds for a server to be up and to have read the run
RUN, NO_FRAMES = "tiny", "no_frames"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DIFFERING = ["optim.lr", "model.heads"]  # the HParams of the run without frames: as if a sweep's job


@pytest.fixture(scope="module")
def logdir(tiny_run, tmp_path_factory) -> Path:
    """The tiny run as a sweep job leaves it (with Hydra's .hydra/overrides.yaml), beside a run without frames: the
    tiny run's config and final metrics logged for HParams as a job of a sweep over DIFFERING would."""
    root = tmp_path_factory.mktemp("plugin_logdir")
    shutil.copytree(tiny_run, root / RUN)
    (root / RUN / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(TINY_RUN))
    final = json.loads((tiny_run / "metrics.json").read_text())
    final.pop("step", None)  # not a metric (attnlab.train.finish)
    logger = TensorBoardLogger(root / NO_FRAMES, name="", version="", default_hp_metric=False)
    hparams.log(logger, OmegaConf.load(tiny_run / ".hydra" / "config.yaml"), final, STEPS, DIFFERING)
    logger.finalize("success")
    return root


def loaded(answer) -> bool:
    return bool(answer) and [r["steps"] for r in answer["runs"]] == [FRAMES]


@pytest.fixture(scope="module")
def servers(logdir, tmp_path_factory):
    """One TensorBoard on both runs, and one on the run without frames alone; started together."""
    logs = tmp_path_factory.mktemp("plugin_tensorboard")
    started = {"both": TensorBoardServer(logdir, log=logs / "both.log"),
               "none": TensorBoardServer(logdir / NO_FRAMES, log=logs / "none.log")}
    try:
        started["both"].wait_until(f"/data/plugin/{tags.PLUGIN}/runs", loaded, TIMEOUT)
        started["none"].wait_until("/data/runs", lambda runs: runs == ["."], TIMEOUT)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["both"]


def route(name: str, **args) -> str:
    return f"/data/plugin/{tags.PLUGIN}/{name}?" + "&".join(f"{k}={v}" for k, v in args.items())


def caption(frame: dict, layer: int, head: int) -> str:
    """A head's title in the tab: its alignment with the target and its best kind on the example, from the frame."""
    kind, score = frame["kind"][layer][head]
    return f"layer {layer} · head {head} · alignment {frame['alignment'][layer][head]:.2f} · {kind} {score:.2f}"


def frame(server, step: int, run: str = RUN) -> dict:
    (answer,) = server.get(route("frames", run=run, step=step))["frames"]
    assert (answer["run"], answer["step"]) == (run, step)
    return answer


def http_error(server, path: str) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as raised:
        server.get(path)
    return raised.value.code, raised.value.read().decode()


def test_listed_as_an_iframed_tab(server):
    listing = server.get("/data/plugins_listing")[tags.PLUGIN]
    assert listing["enabled"] and listing["tab_name"] == "Attention"
    assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": f"/data/plugin/{tags.PLUGIN}/index.js"}


def test_inactive_without_frames(servers):
    """A TensorBoard whose runs have no frames lists the tab as disabled, and its runs route answers no runs."""
    server = servers["none"]
    assert server.get("/data/plugins_listing")[tags.PLUGIN]["enabled"] is False
    assert server.get(route("runs")) == {"runs": []}


def test_hparams_lists_differing_keys_first(servers):
    """TensorBoard ticks the first five hparams and metrics of the experiment for display: the keys the sweep
    varies come first, flagged as differing, and the validation metrics."""
    experiment = servers["none"].get("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = experiment["hparamInfos"]
    assert [i["name"] for i in infos[:2]] == sorted(key.replace(".", "/") for key in DIFFERING)
    assert [bool(i.get("differs")) for i in infos] == [True, True] + [False] * (len(infos) - 2)
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[:4] == ["val/loss", "val/acc", "val/seq_acc", "align/best"] and len(metrics) > 4


def test_overridden_keys():
    keys = ["data/task", "data/seq_len", "model/heads", "model/dim", "seed"]
    assert hparams.overridden(keys, ["model.heads", "seed"]) == {"model/heads", "seed"}
    assert hparams.overridden(keys, ["data", "+experiment", "hydra/launcher"]) == {
        "data/task", "data/seq_len"}  # a group names all its keys; what the config has no key for, nothing


def test_differing_keys_are_what_the_sweep_sweeps(tmp_path):
    """A sweep's job: the keys its command line sweeps over (from the sweep's multirun.yaml, as Hydra's basic
    sweeper writes it), not the fixed overrides every job of it shares; a run of its own: its overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    command = ["model.heads=1,2", "seed=range(3)", "data=reverse", "device=cpu"]
    OmegaConf.save({"hydra": {"overrides": {"task": command}}}, tmp_path / "multirun.yaml")
    job = ["model.heads=2", "seed=1", "data=reverse", "device=cpu"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = {mode: compose("train", overrides=job + [f"hydra.sweep.dir={tmp_path}", f"hydra.mode={mode}"],
                             return_hydra_config=True) for mode in ("MULTIRUN", "RUN")}
    try:
        HydraConfig.instance().set_config(cfg["MULTIRUN"])
        assert hparams.differing_keys() == ["model.heads", "seed"]
        HydraConfig.instance().set_config(cfg["RUN"])
        assert hparams.differing_keys() == ["model.heads", "seed", "data", "device"]
    finally:
        HydraConfig.instance().cfg = None
    assert hparams.differing_keys() == []  # outside Hydra


def test_runs(server):
    (run,) = server.get(route("runs"))["runs"]  # the run without frames is not listed
    assert run["run"] == RUN and run["steps"] == FRAMES
    assert (run["layers"], run["heads"]) == (LAYERS, HEADS)
    # Alone, a run is named by all of its overrides (in a sweep, by those that differ: test_run_labels).
    assert run["overrides"] == TINY_RUN and run["label"] == " ".join(TINY_RUN)


def test_run_without_frames_is_a_404(server):
    code, text = http_error(server, route("frames", run=NO_FRAMES, step=0))
    assert code == 404 and "no Attention frames" in text
    assert http_error(server, route("frames", run=RUN, step=1))[0] == 404  # not a logged step
    assert http_error(server, route("frames", run=RUN))[0] == 400


def test_frame(server):
    first, last = (frame(server, step) for step in (FRAMES[0], FRAMES[-1]))
    attention = np.array(last["attention"], dtype=float)  # [layer, head, query, key]
    assert attention.shape == (LAYERS, HEADS, POSITIONS, POSITIONS)
    assert np.allclose(attention.sum(-1), 1, atol=1e-2)  # float16, rounded: rows of weights sum to 1
    assert np.allclose(np.triu(attention, 1), 0)  # reverse is causal: no weight on a future key
    assert not np.allclose(attention, np.array(first["attention"], dtype=float), atol=1e-3)  # training moved it

    tokens, predict = last["tokens"], last["predict"]
    assert len(tokens) == POSITIONS and last["vocab"][:10] == [str(i) for i in range(10)]
    # Reverse: the second half predicts the first half backwards; the first half predicts nothing.
    assert predict[: N - 1] == [None] * (N - 1)
    assert predict[N - 1 :] == tokens[N - 1 :: -1]

    # Layer 0's target: each scored query on the key holding the token it predicts; layer 1 has none.
    cells, no_target = last["targets"]
    assert no_target is None
    assert sorted((q, k) for q, k, _ in cells) == [(N - 1 + i, N - 1 - i) for i in range(N)]
    target = torch.zeros(POSITIONS, POSITIONS)
    for q, k, w in cells:
        target[q, k] = w
    # The alignment logged with the frame is the frame's own attention scored on that target.
    expected = alignment(torch.tensor(attention[0]).unsqueeze(0).float(), target.unsqueeze(0))
    assert np.allclose(last["alignment"][0], expected.numpy(), atol=2e-3)
    assert last["alignment"][1] == [None, None]
    # Each head's best kind (attnlab.heads) on the frame's own attention of the probe, and its score.
    for layer in range(LAYERS):
        scores = heads.scores(torch.tensor(attention[layer]).unsqueeze(0).float(), torch.tensor([tokens]), causal=True)
        for head in range(HEADS):
            kind, score = last["kind"][layer][head]
            assert score == pytest.approx(max(s[head].item() for s in scores.values() if s[head] == s[head]), abs=2e-3)
            assert scores[kind][head].item() == pytest.approx(score, abs=2e-3)


def test_circuits_are_the_final_weights(server, tiny_run):
    """The last frame is logged at the end of training: its circuits are the saved checkpoint's."""
    (answer,) = server.get(route("circuits", run=RUN, step=FRAMES[-1]))["circuits"]
    state = {k.removeprefix("model."): v.float() for k, v in
             torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"].items()}
    E, P, U = state["embedding.weight"], state["positions"][:POSITIONS], state["readout.weight"]
    d = state["blocks.0.attention.W_Q"].shape[1] // HEADS
    for layer in range(LAYERS):
        W = {w: state[f"blocks.{layer}.attention.{w}"] for w in tags.WEIGHTS}
        for head in range(HEADS):
            h = slice(head * d, (head + 1) * d)
            got = answer["layers"][layer][head]
            expected = {
                "qk_tokens": (E @ W["W_Q"][:, h]) @ (E @ W["W_K"][:, h]).T / d**0.5,
                "qk_positions": ((P @ W["W_Q"][:, h]) @ (P @ W["W_K"][:, h]).T / d**0.5).tril(),
                "ov": E @ W["W_V"][:, h] @ W["W_O"][h] @ U.T,
            }
            for name, matrix in expected.items():
                values = np.array(got[name]["values"], dtype=float)
                if name == "qk_positions":  # future keys are masked out (null)
                    assert np.isnan(np.triu(values, 1)[np.triu_indices(POSITIONS, 1)]).all()
                    values = np.nan_to_num(values)
                scale = matrix.abs().max().item()
                assert got[name]["scale"] == pytest.approx(scale, rel=2e-2)
                assert np.allclose(values, matrix.numpy(), atol=2e-2 * scale), (layer, head, name)


def test_colormaps(server):
    scales = server.get(route("colormaps"))
    assert {name: len(colours) for name, colours in scales.items()} == {"attention": 256, "signed": 256}
    assert scales["attention"][0] == "#440154" and scales["attention"][-1] == "#fde725"  # viridis' ends


def test_page_files_are_served_and_shipped(server):
    """Every file of the page is served as it is, and pyproject's package data names it (a normal install ships
    only what its globs match)."""
    static = Path(plugin.__file__).parent / "static"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = sorted(static.iterdir())
    assert {"index.js", "heatmap.js", "style.css"} <= {path.name for path in files}
    for path in files:
        assert any(path.relative_to(static.parent).match(g) for g in globs["attnlab.tensorboard_plugin"]), path
        url = f"{server.url}/data/plugin/{tags.PLUGIN}/{path.name}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == path.read_bytes()
            assert response.headers.get_content_type() == plugin.CONTENT_TYPES[path.suffix]


def test_default_frame_is_a_few_kilobytes(tmp_path):
    """A frame of the default model (1 layer, 1 head, dim 32; reverse of 8: 15 positions, 10 tokens), as a run of
    one step writes it: most of it the four float16 weight matrices (4 x 32 x 32 x 2 bytes = 8 KB)."""
    from hydra import compose, initialize_config_dir
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    from attnlab.train import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["device=cpu", "trainer.max_steps=1", "logging.every_n_steps=1",
                                             "logging.progress_bar=false"])
    run(cfg, tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    frames = [e for e in EventFileLoader(str(events)).Load() if e.summary.value and e.summary.value[0].tag in tags.FRAME]
    assert [e.step for e in frames] == [0, 1]  # the first step and the last
    shapes = {v.tag: make_ndarray(v.tensor).shape for v in frames[-1].summary.value}
    assert shapes[tags.FRAME_ATTENTION] == (1, 1, 15, 15) and shapes[tags.FRAME_WEIGHTS] == (1, 4, 32, 32)
    assert 8 * 1024 < frames[-1].ByteSize() < 12_000


def test_what_tensorboard_imports_is_light():
    """TensorBoard imports the plugin at start-up, in its own process: neither torch, Lightning, Hydra nor
    matplotlib come with it (seconds of start-up, and an import error there would stop TensorBoard)."""
    code = ("import sys; from attnlab.tensorboard_plugin import loader, plugin; "
            "print([m for m in ('torch', 'lightning', 'hydra', 'matplotlib') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_run_labels():
    sweep = {"a": ["data=reverse", "model.heads=1"], "b": ["data=reverse", "model.heads=2"], "c": ["data=reverse"]}
    assert plugin.run_labels(sweep) == {"a": "model.heads=1", "b": "model.heads=2", "c": "c"}
    assert plugin.run_labels({"solo": []}) == {"solo": "solo"}


# The browser test: TensorBoard's own page, the tab opened by its URL, the tab's iframe driven as a user would.
needs_browser = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"no browser to drive: needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install -y chromium "
    "chromium-driver; .ci/run installs them)",
)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@needs_browser
def test_tab_in_a_browser(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT, poll_frequency=0.1)
    css = lambda root, selector: root.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731

    def each(selector: str, expression: str) -> list:
        """`expression` of every element matching `selector` (as `e`), in one round trip to the browser."""
        return browser.execute_script(f"return [...document.querySelectorAll(arguments[0])].map((e) => {expression})",
                                      selector)

    last, first = (frame(server, step) for step in (FRAMES[-1], FRAMES[0]))
    names = [last["vocab"][t] for t in last["tokens"]]
    predicted = [None if t is None else last["vocab"][t] for t in last["predict"]]

    browser.get(f"{server.url}/#{tags.PLUGIN}")
    browser.switch_to.frame(wait.until(lambda b: css(b, "iframe"))[0])
    cells = LAYERS * HEADS * POSITIONS**2
    wait.until(lambda b: len(css(b, "td.cell")) == cells)
    assert browser.execute_script("return document.body.dataset.step") == str(FRAMES[-1])  # opens at the last step
    (section,) = css(browser, "section.run")
    assert section.get_attribute("data-run") == RUN
    assert css(section, "h2 .run-label")[0].text == " ".join(TINY_RUN)
    # The picker lists it by the same name, with its last frame's alignment (as align/best: layer 1 has no target).
    assert css(browser, ".run-choice span")[0].text == " ".join(TINY_RUN)
    assert css(browser, ".run-choice .run-best")[0].text == f"alignment {max(last['alignment'][0]):.2f}"

    # Layer 0, head 1: tokens as text on both axes, query rows with the token they predict, the alignment in the
    # title, the target's cells outlined.
    selected = "figure.heatmap[data-layer='0'][data-head='1']"
    head = css(section, selected)[0]
    assert each(f"{selected} th.col .token", "e.textContent") == names
    assert each(f"{selected} th.row .token", "e.textContent") == names
    notes = each(f"{selected} th.row", "e.querySelector('.note')?.textContent ?? null")
    assert notes == [None if p is None else f"→ {p}" for p in predicted]
    assert css(head, "figcaption")[0].text == caption(last, 0, 1)
    targets = each(f"{selected} td.cell", "e.classList.contains('target')")
    outlined = [(i // POSITIONS, i % POSITIONS) for i, target in enumerate(targets) if target]
    assert outlined == sorted((q, k) for q, k, _ in last["targets"][0])
    assert not any(each("figure[data-layer='1'] td.cell", "e.classList.contains('target')"))

    # Hover: query position and token, key position and token, weight.
    q, k = outlined[0]
    ActionChains(browser).move_to_element(css(head, "td.cell")[q * POSITIONS + k]).perform()
    tooltip = wait.until(lambda b: [t for t in css(b, ".tooltip") if t.is_displayed()])[0]
    weight = last["attention"][0][1][q][k]
    query, key = f"query {q} “{names[q]}” (predicts “{predicted[q]}”)", f"key {k} “{names[k]}”"
    assert tooltip.text == f"{query} · {key} · weight {weight:.3f}"

    # The step slider: Home goes to the first logged step, and the cells show that frame.
    colours = lambda: each(f"{selected} td.cell", "getComputedStyle(e).backgroundColor")  # noqa: E731
    before = colours()
    css(browser, "#step")[0].send_keys(Keys.HOME)
    wait.until(lambda b: b.execute_script("return document.body.dataset.step") == str(FRAMES[0]))
    assert css(browser, ".step-value")[0].text == str(FRAMES[0])
    assert css(head, "figcaption")[0].text == caption(first, 0, 1)
    assert colours() != before
    css(browser, "#step")[0].send_keys(Keys.ARROW_RIGHT)  # one stop on: the next logged step, not step 1
    wait.until(lambda b: b.execute_script("return document.body.dataset.step") == str(FRAMES[1]))

    # The circuits: three maps per head, positions x positions with the future keys masked.
    css(browser, "#circuits")[0].click()
    wait.until(lambda b: len(css(section, "figure[data-circuit]")) == LAYERS * HEADS * 3)
    positional = "figure[data-circuit='qk_positions']"
    assert len(each(f"{positional} td.cell", "1")) == LAYERS * HEADS * POSITIONS**2
    assert len(each(f"{positional} td.cell.masked", "1")) == LAYERS * HEADS * POSITIONS * (POSITIONS - 1) // 2
    assert len(each("figure[data-circuit='ov'] td.cell", "1")) == LAYERS * HEADS * len(last["vocab"]) ** 2
    assert browser.execute_script("return document.querySelectorAll('.error').length") == 0
