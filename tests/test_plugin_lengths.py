"""The Attention tab at other lengths (data.val_lengths), on a real TensorBoard over a real short variable-length run.

At every frame the run logs, beside the training distribution's probe, the first example of each length's validation
set; the routes answer each length's frames (checked against the checkpoint's model on that example) and circuits,
the training probe comes cut to its real length (no pads drawn as tokens), a stacked member writes the same frames
as its solo run, and a run without data.val_lengths writes none. In a browser the probe selector switches length."""

import json
import urllib.error

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from attnlab import stacked, tags
from attnlab.alignment import alignment
from attnlab.data import VALIDATION_SEED
from attnlab.inspection import load_run
from attnlab.tensorboard_server import TensorBoardServer
from conftest import ROOT
from test_plugin import CHROMEDRIVER, CHROMIUM, TIMEOUT, browser, needs_browser, route  # noqa: F401 (a fixture)

SEQ_LEN, MIN_LEN, LENGTHS = 6, 2, [3, 12]  # the first validation example: 3 long, padded
STEPS, IMAGE_EVERY = 12, 4
FRAMES = list(range(0, STEPS + 1, IMAGE_EVERY))
LAYERS, HEADS = 2, 2
POINTER = 1  # the layer of copy's target in a variable-length run (SequenceMap.pointer_layer)
RUN, OTHER = "lengths", "other"  # OTHER: a second run of the sweep, seed=1, validated at the first length only
LENGTHS_RUN = [
    "device=cpu", "data=copy", f"data.seq_len={SEQ_LEN}", f"data.min_len={MIN_LEN}",
    f"data.val_lengths=[{','.join(map(str, LENGTHS))}]", "data.batch_size=32", "data.val_size=32",
    "model.dim=16", f"model.heads={HEADS}", f"model.layers={LAYERS}",
    f"trainer.max_steps={STEPS}", "trainer.val_every_n_steps=6", "trainer.stop_at=null",
    "logging.every_n_steps=4", f"logging.images_every_n_steps={IMAGE_EVERY}", "logging.progress_bar=false",
]


def compose_cfg(overrides: list[str]):
    """The config scripts/train.py composes for these overrides (data.min_len and data.val_lengths as it takes them)."""
    from hydra import compose, initialize_config_dir

    from attnlab.config import checked_arguments

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=checked_arguments(overrides))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """A TensorBoard logdir holding two variable-length runs as a sweep's jobs, trained in this process."""
    from attnlab.train import run

    root = tmp_path_factory.mktemp("plugin_lengths")
    for name, overrides in [(RUN, []), (OTHER, ["seed=1", f"data.val_lengths=[{LENGTHS[0]}]"])]:
        cfg = compose_cfg(LENGTHS_RUN + overrides)
        (root / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, root / name / ".hydra" / "config.yaml")
        run(cfg, root / name)
    return root


@pytest.fixture(scope="module")
def trained(logdir):
    """The run's model at its last checkpoint (the weights of the last frame), its task."""
    return load_run(logdir / RUN)


@pytest.fixture(scope="module")
def server(logdir, tmp_path_factory):
    ready = lambda answer: bool(answer) and [r["steps"] for r in answer["runs"]] == [FRAMES] * 2  # noqa: E731
    tensorboard = TensorBoardServer(logdir, log=tmp_path_factory.mktemp("tensorboard") / "log")
    try:
        tensorboard.wait_until(route("runs"), ready, TIMEOUT)
        yield tensorboard
    finally:
        tensorboard.stop()


def frame(server, step: int, length: int | None, run: str = RUN) -> dict:
    args = {"run": run, "step": step} | ({} if length is None else {"length": length})
    (answer,) = server.get(route("frames", **args))["frames"]
    assert (answer["run"], answer["step"], answer["length"]) == (run, step, length)
    return answer


def first_example(task, length: int | None):
    """The first example of the run's validation set (at `length`), made here from the task as the data module does."""
    inputs, targets, mask = task.validation_set(32, torch.Generator().manual_seed(VALIDATION_SEED), length=length)
    return inputs[:1], targets[:1], mask[:1]


def test_runs_list_their_lengths(server):
    runs = server.get(route("runs"))["runs"]
    listed = [(r["run"], r["steps"], r["lengths"]) for r in runs]
    assert listed == [(RUN, FRAMES, LENGTHS), (OTHER, FRAMES, LENGTHS[:1])]


@pytest.mark.parametrize("length", LENGTHS)
def test_frames_at_each_length(server, trained, length):
    """The last frame at a length is the final model's attention on the first example of that length's validation
    set: its tokens, what each query predicts, the task's target there and the alignment with it."""
    task, model = trained.task, trained.model
    inputs, targets, mask = first_example(task, length)
    width = task.positions(length)
    assert inputs.shape[1] == width and not (inputs == task.padding).any()  # exactly that long: no pads
    last = frame(server, FRAMES[-1], length)
    attention = np.array(last["attention"], dtype=float)  # [layer, head, query, key]
    assert attention.shape == (LAYERS, HEADS, width, width)
    with torch.no_grad():
        _, weights = model(inputs, need_weights=True)
    assert np.allclose(attention, torch.stack([w[0] for w in weights]).numpy(), atol=2e-3)  # float16, rounded
    assert last["tokens"] == inputs[0].tolist()
    assert last["predict"] == [t if m else None for t, m in zip(targets[0].tolist(), mask[0].tolist())]
    assert last["vocab"][task.separator] == "|" and last["tokens"][length] == task.separator
    assert task.pointer_layer == POINTER and last["targets"][1 - POINTER] is None
    target = task.target_attention(inputs, POINTER)[0]  # [query, key]
    assert sorted([q, k] for q, k, _ in last["targets"][POINTER]) == target.nonzero().tolist()
    expected = alignment(torch.tensor(attention[POINTER]).unsqueeze(0).float(), target.unsqueeze(0))
    assert np.allclose(last["alignment"][POINTER], expected.numpy(), atol=2e-3)
    first = frame(server, FRAMES[0], length)
    assert first["tokens"] == last["tokens"]  # one fixed probe per length, frame after frame
    assert not np.allclose(attention, np.array(first["attention"], dtype=float), atol=1e-3)  # training moved it


def test_training_probe_cut_to_its_real_length(server, trained, logdir):
    """The training distribution's probe is a shorter example padded to the longest: the tab gets its real tokens
    only, with the attention the model gives them padded (padding changes nothing a real token computes)."""
    task, model = trained.task, trained.model
    inputs, _, _ = first_example(task, None)
    real = int((inputs[0] != task.padding).sum())
    assert real < inputs.shape[1]  # this probe is padded: the cut is tested
    last = frame(server, FRAMES[-1], None)
    assert last["tokens"] == inputs[0, :real].tolist() and task.padding not in last["tokens"]
    with torch.no_grad():
        _, weights = model(inputs, need_weights=True)
    padded = torch.stack([w[0] for w in weights])[..., :real, :real]
    assert np.allclose(np.array(last["attention"], dtype=float), padded.numpy(), atol=2e-3)
    # The Images tab's probe is the same cut example: attention images `real` pixels wide.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / RUN), size_guidance={"images": 1}).Reload()
    assert events.Images(tags.attention(0, 0))[-1].width == real


def test_circuits_at_a_length(server, trained):
    """Circuits at a length: the frame's weights through that probe's positions (learned rows past data.seq_len's
    stream included: they never trained)."""
    task, model = trained.task, trained.model
    for length in [None, *LENGTHS]:
        args = {"run": RUN, "step": FRAMES[-1]} | ({} if length is None else {"length": length})
        (answer,) = server.get(route("circuits", **args))["circuits"]
        width = len(frame(server, FRAMES[-1], length)["tokens"])
        assert answer["positions"] == width
        P = model.positions.detach()[:width]
        attention = model.blocks[0].attention
        d = attention.d_head
        W_Q, W_K = attention.W_Q.detach()[:, d : 2 * d], attention.W_K.detach()[:, d : 2 * d]  # head 1
        expected = ((P @ W_Q) @ (P @ W_K).T / d**0.5).tril()
        values = np.nan_to_num(np.array(answer["layers"][0][1]["qk_positions"]["values"], dtype=float))
        assert values.shape == (width, width)
        assert np.allclose(values, expected.numpy(), atol=2e-2 * expected.abs().max().item())


def test_a_length_not_logged(server):
    for args, code, text in [({"length": 5}, 404, f"run {RUN!r} has no Attention frames of length 5"),
                             ({"length": LENGTHS[1], "run": OTHER}, 404, f"run {OTHER!r} has no Attention frames of"),
                             ({"length": "x"}, 400, "length must be a data length")]:
        with pytest.raises(urllib.error.HTTPError) as raised:
            server.get(route("frames", **{"run": RUN, "step": FRAMES[-1], **args}))
        assert raised.value.code == code and text in raised.value.read().decode()


def test_run_without_val_lengths_writes_no_length_frames(tiny_run):
    """A run without data.val_lengths writes today's frames only (tests/test_plugin.py reads them)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (events,) = tiny_run.glob("events.out.tfevents.*")
    written = {v.tag for e in EventFileLoader(str(events)).Load() for v in e.summary.value
               if v.metadata.plugin_data.plugin_name == tags.PLUGIN}
    assert written == set(tags.FRAME)


def test_length_frame_size(tmp_path):
    """A length's event is its probe's attention (2 bytes a cell per head), position embedding and labels: the
    default model on copy at length 64 (128 positions), as one step of a run writes it, is 42 KB."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    from attnlab.train import run

    run(compose_cfg(["device=cpu", "data=copy", "data.seq_len=16", "data.min_len=8", "data.val_lengths=[64]",
                     "data.val_size=16", "trainer.max_steps=1", "logging.progress_bar=false"]), tmp_path)
    (events,) = tmp_path.glob("events.out.tfevents.*")
    frames = [e for e in EventFileLoader(str(events)).Load()
              if e.summary.value and e.summary.value[0].tag == tags.frame_at(tags.FRAME_ATTENTION, 64)]
    assert [e.step for e in frames] == [0, 1]
    shapes = {v.tag: make_ndarray(v.tensor).shape for v in frames[-1].summary.value}
    assert shapes[tags.frame_at(tags.FRAME_ATTENTION, 64)] == (1, 1, 128, 128)
    assert shapes[tags.frame_at(tags.FRAME_POSITIONS, 64)] == (128, 32)
    assert 40_000 < frames[-1].ByteSize() < 44_000


def test_stacked_member_writes_the_solo_frames(logdir, tmp_path):
    """hydra/launcher=stacked runs the same callbacks per member: a one-member group of the same config writes the
    same frames at every length as the solo run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    (member,) = stacked.train_group([compose_cfg(LENGTHS_RUN)], [tmp_path / "member"])
    assert isinstance(member.outcome, dict)
    runs = {name: EventAccumulator(str(path), size_guidance={"tensors": 0}).Reload()
            for name, path in [("solo", logdir / RUN), ("member", member.run_dir)]}
    per_length = [tags.frame_at(tag, n) for n in LENGTHS for tag in tags.FRAME_PER_PROBE]
    assert set(per_length) <= set(runs["member"].Tags()["tensors"])
    for tag in per_length:
        solo, ours = (runs[name].Tensors(tag) for name in ("solo", "member"))
        assert [e.step for e in ours] == [e.step for e in solo] == FRAMES
        for a, b in zip(ours, solo):
            a, b = make_ndarray(a.tensor_proto), make_ndarray(b.tensor_proto)
            if tag.endswith("/probe"):
                assert json.loads(a.item()) == json.loads(b.item())
            else:
                np.testing.assert_allclose(a.astype(float), b.astype(float), atol=2e-3, err_msg=tag)


@needs_browser
def test_length_selector_in_a_browser(server, browser):  # noqa: F811 (the fixture imported above)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT, poll_frequency=0.1)
    css = lambda root, selector: root.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731
    shown = lambda: browser.execute_script(  # noqa: E731
        "return document.body.dataset.step + ' ' + document.body.dataset.length")

    def visible(selector: str, expression: str) -> list:
        """`expression` of every shown element matching `selector` (as `e`), in one round trip."""
        return browser.execute_script("return [...document.querySelectorAll(arguments[0])]"
                                      f".filter((e) => e.offsetParent !== null).map((e) => {expression})", selector)

    def names(answer: dict) -> list[str]:
        return [answer["vocab"][t] for t in answer["tokens"]]

    browser.get(f"{server.url}/#{tags.PLUGIN}")
    browser.switch_to.frame(wait.until(lambda b: css(b, "iframe"))[0])
    wait.until(lambda b: shown() == f"{FRAMES[-1]} training")
    select = Select(wait.until(lambda b: css(b, "select#length"))[0])
    assert [o.text for o in select.options] == ["training distribution"] + [f"length {n}" for n in LENGTHS]
    lengths = {RUN: LENGTHS, OTHER: LENGTHS[:1]}
    head = lambda run: (f"section.run[data-run='{run}'] "  # noqa: E731
                        f"figure.heatmap[data-layer='{POINTER}'][data-head='1']")

    def side_by_side(step: int, length: int | None) -> None:
        """Each run's section at `length`: its own frame's maps, or (without that length) a line saying so."""
        for run in (RUN, OTHER):
            section = f"section.run[data-run='{run}']"
            if length is not None and length not in lengths[run]:
                assert visible(f"{section} td.cell", "1") == []
                assert visible(f"{section} .missing", "e.textContent") == [
                    f"No probe of length {length}: not among this run's data.val_lengths."]
                continue
            answer = frame(server, step, length, run)
            assert len(visible(f"{section} td.cell", "1")) == LAYERS * HEADS * len(answer["tokens"]) ** 2
            assert visible(f"{head(run)} th.col .token", "e.textContent") == names(answer)
            assert visible(f"{head(run)} figcaption", "e.textContent") == [
                f"layer {POINTER} · head 1 · alignment {answer['alignment'][POINTER][1]:.2f}"]
            note = f"step {step}" + ("" if length is None else f" · length {length}")
            assert visible(f"{section} h2 .step-note", "e.textContent") == [note]

    side_by_side(FRAMES[-1], None)
    for length in reversed(LENGTHS):
        select.select_by_value(str(length))
        wait.until(lambda b: shown() == f"{FRAMES[-1]} {length}")
        side_by_side(FRAMES[-1], length)
    assert frame(server, FRAMES[-1], LENGTHS[0], RUN)["attention"] != frame(server, FRAMES[-1], LENGTHS[0], OTHER)[
        "attention"]  # two seeds: two pictures of the same probe

    # The step slider at a length: the first frame of that length's probe.
    css(browser, "#step")[0].send_keys(Keys.HOME)
    wait.until(lambda b: shown() == f"{FRAMES[0]} {LENGTHS[0]}")
    side_by_side(FRAMES[0], LENGTHS[0])
    # Back to the training distribution's probe, at the step the slider is on.
    select.select_by_value("")
    wait.until(lambda b: shown() == f"{FRAMES[0]} training")
    side_by_side(FRAMES[0], None)
    # The circuits at a length: the positional QK map over that probe's positions.
    select.select_by_value(str(LENGTHS[1]))
    css(browser, "#circuits")[0].click()
    width = len(frame(server, FRAMES[0], LENGTHS[1])["tokens"])
    positional = f"section.run[data-run='{RUN}'] figure[data-circuit='qk_positions'] td.cell"
    wait.until(lambda b: len(visible(positional, "1")) == LAYERS * HEADS * width**2)
    assert browser.execute_script("return document.querySelectorAll('.error').length") == 0
