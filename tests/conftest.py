"""Fixtures and helpers shared by several test files."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Runs trained in this process take one torch thread, as scripts/train.py gives every run (device.threads=1):
    on a busy 2-core machine a second thread spins (a 20-step stacked group took 18 s at 2 threads, 1.7 s at 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def script_runs():
    """Runs of scripts/*.py, each a process of its own, forked from one server that has made torch's imports once
    for the session (tests/script_runs.py): script_runs.run(script, [args, ...], cwd) -> CompletedProcess each."""
    from script_runs import ScriptRuns

    server = ScriptRuns()
    yield server
    server.close()


# A short real run: 2 layers x 2 heads, attention and weight images every 2 steps (13 frames per tag, more than the
# 10 TensorBoard keeps by default), validation every 8 steps.
TINY_RUN = [
    "device=cpu", "data=reverse", "data.seq_len=4", "data.batch_size=32", "data.val_size=64",
    "model.dim=16", "model.heads=2", "model.layers=2",
    "trainer.max_steps=24", "trainer.val_every_n_steps=8", "trainer.stop_at=null",
    "logging.every_n_steps=4", "logging.images_every_n_steps=2", "logging.progress_bar=false",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of TINY_RUN, trained in this process (a scripts/train.py subprocess would pay Lightning's
    import again; tests/test_train.py covers the script itself). Laid out as scripts/train.py lays it out:
    .hydra/config.yaml, event files, checkpoints/last.ckpt, metrics.json."""
    return trained_in(tmp_path_factory.mktemp("tiny_run"), TINY_RUN)


def trained_in(run_dir: Path, overrides: list[str]) -> Path:
    """A run of the train config with `overrides`, trained in this process into run_dir, laid out as
    scripts/train.py lays it out (.hydra/config.yaml beside what the run writes)."""
    from attnlab.train import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    run(cfg, run_dir)
    return run_dir


def script_module(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module, for its functions (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
