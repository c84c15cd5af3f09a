"""One real run of scripts/train.py: it solves reverse, and its run directory and TensorBoard events hold what the
README promises, and its console what it should: each notice once, one progress line, what was learned."""

import fnmatch
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from attnlab import console, tags, viz

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, script_runs) -> tuple[Path, subprocess.CompletedProcess, float]:
    """The run's directory, what it printed (with its progress line: logging.progress_bar is on by default), and
    how long the process took. A process of its own, forked from the session's server that has made torch's
    imports (tests/script_runs.py; tests/test_bad_input.py checks that such a run prints as one started afresh)."""
    out = tmp_path_factory.mktemp("run")
    start = time.perf_counter()
    (result,) = script_runs.run(
        ROOT / "scripts" / "train.py",
        [["device=cpu", "data.seq_len=6", "model.dim=32", "model.heads=2", "optim.lr=3e-3", "trainer.max_steps=1500",
          "trainer.val_every_n_steps=50", "logging.images_every_n_steps=50", f"hydra.run.dir={out}"]],
        ROOT, timeout=240,
    )
    took = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deprecated" not in result.stderr  # nothing a user cannot act on (Lightning's LeafSpec warning)
    assert f"Run saved in {out}" in result.stdout and f"tensorboard --logdir {out}" in result.stdout
    return out, result, took


@pytest.fixture(scope="module")
def run_dir(run) -> Path:
    return run[0]


@pytest.fixture(scope="module")
def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    return accumulator.Reload()


def test_solves_reverse(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/loss", "val/acc", "val/seq_acc"} <= set(metrics)
    assert metrics["val/seq_acc"] >= 0.99
    assert metrics["val/acc"] >= 0.99


def test_run_directory(run_dir):
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] > 0
    assert "model.blocks.0.attention.W_Q" in checkpoint["state_dict"]


def test_readme_lists_what_a_run_directory_holds(run_dir):
    """README's listing of a run's directory: every file of a single run is in it, and every entry of it that is not
    for sweeps or several processes only is in the run."""
    readme = (ROOT / "README.md").read_text()
    listing = readme.split("A run's directory:\n\n")[1].split("\n\n")[0].splitlines()[1:]  # after outputs/...
    entries = {m[1]: line for line in listing if (m := re.match(r"      (\S+)  ", line))}  # not continuations
    patterns = [name.rstrip("/").replace("{r}", "*") for name in entries]
    made = [p.relative_to(run_dir).as_posix() for p in run_dir.iterdir()]
    unlisted = [name for name in made if not any(fnmatch.fnmatch(name, pattern.split("/")[0]) for pattern in patterns)]
    assert not unlisted, f"README's run directory does not list {unlisted}"
    for name, line in entries.items():
        if "in a sweep" not in line and "several processes" not in line:
            assert list(run_dir.glob(name.rstrip("/"))), f"README lists {name}, which a run does not write"


def test_scalars(events):
    scalars = events.Tags()["scalars"]
    for stage in tags.STAGES:
        for name in tags.METRICS:
            assert tags.metric(stage, name) in scalars
    assert any(tag.startswith("lr-") for tag in scalars)
    loss = events.Scalars("train/loss")
    assert loss[-1].value < 0.5 * loss[0].value  # it learned
    assert events.Scalars("val/seq_acc")[-1].value >= 0.99


def test_attention_and_weight_images_at_several_steps(events):
    images = events.Tags()["images"]
    wanted = [tags.attention(0, 0), tags.attention(0, 1)] + [tags.weight(0, w) for w in tags.WEIGHTS]
    for tag in wanted:
        assert tag in images
        frames = events.Images(tag)
        assert len({frame.step for frame in frames}) >= 3
    # Frames change as the model learns.
    first, last = events.Images(tags.attention(0, 0))[0], events.Images(tags.attention(0, 0))[-1]
    assert first.encoded_image_string != last.encoded_image_string


def test_last_weight_frame_shows_the_final_weights_one_pixel_per_entry(events, run_dir):
    # The frames are drawn on a background thread while training goes on: each must show the weights of its own
    # step. Training ends with a frame at its last step, the step of the final checkpoint.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for name in tags.WEIGHTS:
        last = events.Images(tags.weight(0, name))[-1]
        assert last.step == checkpoint["global_step"]
        weights = checkpoint["state_dict"][f"model.blocks.0.attention.{name}"]
        expected = np.array(viz.weight_image(weights, viz.default_weight_scale(32)).convert("RGB"))  # model.dim=32
        pixels = np.array(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
        assert pixels.shape == (*weights.shape, 3)
        assert (pixels == expected).all(), name


def test_histograms(events):
    from attnlab.callbacks import HISTOGRAM_BINS

    histograms = events.Tags()["histograms"]
    for name in tags.WEIGHTS:
        assert tags.weight_histogram(0, name) in histograms
        frames = events.Histograms(tags.weight_histogram(0, name))
        assert len(frames) >= 3
        # Even buckets over the values' range (torch's writer adds one more at the top edge), not torch's ~1500
        # default ones: the records stay small.
        assert all(2 <= len(f.histogram_value.bucket) <= HISTOGRAM_BINS + 1 for f in frames)


def test_text_config_and_probe_tokens(events):
    texts = events.Tags()["tensors"]
    assert f"{tags.CONFIG}/text_summary" in texts and f"{tags.PROBE_TOKENS}/text_summary" in texts
    table = events.Tensors(f"{tags.PROBE_TOKENS}/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| input |" in table and "| position | 0 | 1 |" in table
    config = events.Tensors(f"{tags.CONFIG}/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "dim: 32" in config and "task: reverse" in config


def test_hparams_hold_the_config_and_final_metrics(events, run_dir):
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/dim"].number_value == 32
    assert start.hparams["data/task"].string_value == "reverse"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {info.name.tag for info in experiment.metric_infos}
    assert {"val/loss", "val/acc", "val/seq_acc"} <= names and "hp_metric" not in names
    # TensorBoard shows each metric's last value: it must be the final one in metrics.json.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert events.Scalars("val/seq_acc")[-1].value == pytest.approx(metrics["val/seq_acc"])


def test_console_prints_each_notice_once_and_one_progress_line(run, events):
    run_dir, result, _ = run
    printed, log = result.stdout + result.stderr, (run_dir / "train.log").read_text()
    # Once on the console (Lightning's own handler and Hydra's printed it twice), once in the run's log file.
    assert printed.count("GPU available:") == 1 and log.count("GPU available:") == 1
    assert "litlogger" not in printed + log  # Lightning's advertisement, in every run
    assert "Validation" not in printed and "Epoch" not in printed and "it/s" not in printed  # Lightning's own bars
    assert "`Trainer.fit` stopped" not in printed  # the progress line says why, in the run's terms
    metrics = json.loads((run_dir / "metrics.json").read_text())
    step = metrics["step"]
    reason = "max_steps reached" if step == 1500 else "stop_at 0.999 reached"  # trainer.stop_at: the default
    assert ("`Trainer.fit` stopped: `max_steps=1500` reached." in log) == (step == 1500)
    # stdout is a pipe here, not a terminal: no redraw in place, but a line of its own after each validation (every
    # 50 steps) and at the end, each with the bar as tqdm draws it.
    assert "\r" not in result.stdout
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == step // 50 + 1, progress
    # The last: the step training ended at, the train loss last logged, the last validation's seq_acc, and why.
    loss = events.Scalars(tags.metric("train", "loss"))[-1].value
    shown = rf"step {step}/1500 .{{20}} loss {loss:.4g} · val/seq_acc {metrics['val/seq_acc']:.3f} · {reason} "
    assert re.fullmatch(shown + r"\[\d\d:\d\d, [\d.]+ steps/s\]", progress[-1]), progress[-1]


def test_ends_with_a_line_of_what_was_learned(run):
    run_dir, result, took = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = re.search(rf"^Trained {metrics['step']} steps in (\d+\.\d) s: val/loss {metrics['val/loss']:.3g} · "
                      rf"val/seq_acc {metrics['val/seq_acc']:.3f} · align/best {metrics['align/best']:.3f}$",
                      result.stdout, re.M)
    assert found, result.stdout[-1000:]
    assert 0 < float(found[1]) < took  # the run's wall time, within the process's
    assert found.end() < result.stdout.index("Run saved in")


def test_what_was_learned_without_a_target_pattern():
    # A task without a target pattern has no align/best; longer runs in minutes and hours.
    metrics = {"step": 20, "val/loss": 2.34567, "val/acc": 0.25, "val/seq_acc": 0.0}
    assert console.learned(metrics, 125.4) == "Trained 20 steps in 2 min 05 s: val/loss 2.35 · val/seq_acc 0.000"
    assert console.duration(7500) == "2 h 05 min"


def test_imports_run_with_the_collector_paused_then_frozen():
    """scripts/train.py imports torch and Lightning with Python's garbage collector paused, then freezes what they
    made (the start-up section of python scripts/bench.py measures what that saves). The collector is on again
    after, also when the block
    ends in an exit (a refused config), and a second job in the same process (basic launcher) freezes nothing more:
    its first job's garbage must stay collectable. In a process of its own: the freeze is for the whole process."""
    code = """
import gc, runpy
paused = runpy.run_path("scripts/train.py")["collector_paused"]
try:
    with paused():
        assert not gc.isenabled()
        import torch
        raise SystemExit(2)
except SystemExit:
    pass
frozen = gc.get_freeze_count()
assert gc.isenabled() and frozen > 100_000, frozen
with paused():
    assert gc.isenabled()
    garbage = [[]]
    garbage[0].append(garbage)
assert gc.isenabled() and gc.get_freeze_count() == frozen
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
