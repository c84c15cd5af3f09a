"""A real TensorBoard over a short run: start `tensorboard --logdir RUN`, ask its HTTP data API (what the web page
itself asks) for every kind of data the README promises, then stop it.

Two servers run side by side on the same run: one as the README tells users to start it
(`--samples_per_plugin images=1000`), which must show every image frame, and one with TensorBoard's defaults, which
keeps 10 frames per image tag (the reason for the flag)."""

import json

import pytest

from attnlab import tags
from attnlab.tensorboard_server import TensorBoardServer, images_path

README_FLAGS = ["--samples_per_plugin", "images=1000"]
STEPS, IMAGE_EVERY = 24, 2  # tests/conftest.py TINY_RUN
FRAMES = list(range(0, STEPS + 1, IMAGE_EVERY))  # images at step 0, every 2 steps and the last
LAYERS, HEADS = 2, 2
START_TIMEOUT, LOAD_TIMEOUT = 60, 60  # seconds; a server that is not up (or has not read the run) by then fails


def all_frames(frames) -> bool:
    return bool(frames) and frames[-1]["step"] == STEPS


@pytest.fixture(scope="module")
def servers(tiny_run, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tensorboard")
    started = {
        "readme": TensorBoardServer(tiny_run, *README_FLAGS, log=logs / "readme.log"),
        "default": TensorBoardServer(tiny_run, log=logs / "default.log"),
    }
    try:
        for server in started.values():
            assert server.wait_until("/data/runs", lambda runs: runs == ["."], START_TIMEOUT) == ["."]
        # Loaded once the last frame of the last tag written is there.
        last_tag = tags.weight(LAYERS - 1, tags.WEIGHTS[-1])
        started["readme"].wait_until(images_path(last_tag), all_frames, LOAD_TIMEOUT)
        yield started
    finally:
        for server in started.values():
            server.stop()
    assert all(server.process.returncode is not None for server in started.values())


def test_scalars(servers):
    scalars = servers["readme"].get("/data/plugin/scalars/tags")["."]
    wanted = [tags.metric(stage, name) for stage in tags.STAGES for name in tags.METRICS]
    wanted += [tags.align(0, head) for head in range(HEADS)] + ["lr-AdamW"]
    assert set(wanted) <= set(scalars), set(wanted) - set(scalars)


def test_images_at_every_step(servers):
    server = servers["readme"]
    image_tags = server.get("/data/plugin/images/tags")["."]
    wanted = [tags.attention(layer, head) for layer in range(LAYERS) for head in range(HEADS)]
    wanted += [tags.weight(layer, name) for layer in range(LAYERS) for name in tags.WEIGHTS]
    assert set(wanted) <= set(image_tags), set(wanted) - set(image_tags)
    for tag in wanted:
        frames = server.get(images_path(tag))
        assert [frame["step"] for frame in frames] == FRAMES, tag
    # The frames are real pictures that change as training goes.
    frames = server.get(images_path(tags.attention(0, 0)))
    first, last = (server.get(f"/data/plugin/images/individualImage?{frames[i]['query']}") for i in (0, -1))
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and last.startswith(b"\x89PNG\r\n\x1a\n")
    assert first != last


def test_default_keeps_ten_frames(servers):
    """Why the README gives --samples_per_plugin: without it TensorBoard samples 10 of the 13 frames."""
    frames = servers["default"].wait_until(images_path(tags.attention(0, 0)), all_frames, LOAD_TIMEOUT)
    assert len(frames) == 10 < len(FRAMES)
    assert {frame["step"] for frame in frames} < set(FRAMES)


def test_histograms(servers):
    histograms = servers["readme"].get("/data/plugin/histograms/tags").get(".", {})
    wanted = {tags.weight_histogram(layer, name) for layer in range(LAYERS) for name in tags.WEIGHTS}
    assert wanted <= set(histograms), wanted - set(histograms)


def test_text(servers):
    text = servers["readme"].get("/data/plugin/text/tags")["."]
    # TensorBoard names a text series <tag>/text_summary.
    assert {f"{tags.CONFIG}/text_summary", f"{tags.PROBE_TOKENS}/text_summary"} <= set(text), text


def test_hparams(servers, tiny_run):
    server = servers["readme"]
    experiment = server.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {info["name"] for info in experiment["hparamInfos"]}
    assert {"model/dim", "model/heads", "model/layers", "data/task", "optim/lr", "seed"} <= hparams, hparams
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"val/loss", "val/acc", "val/seq_acc"} <= metrics

    groups = server.get(
        "/data/plugin/hparams/session_groups",
        {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"], "colParams": [],
         "startIndex": 0, "sliceSize": 10},
    )["sessionGroups"]
    assert len(groups) == 1 and groups[0]["hparams"]["model/dim"] == 16 and groups[0]["hparams"]["data/task"] == "reverse"
    final = json.loads((tiny_run / "metrics.json").read_text())
    values = {m["name"]["tag"]: m["value"] for m in groups[0]["metricValues"]}
    assert values["val/seq_acc"] == pytest.approx(final["val/seq_acc"])
    assert values["val/loss"] == pytest.approx(final["val/loss"])
