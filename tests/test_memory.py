"""The memory check: a run whose tensors cannot fit in this machine's memory is refused before anything is
allocated (one line naming the key, what it needs and what the machine has, exit 2, no run directory); every
shipped config passes it on any machine with half a gigabyte to spare."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from attnlab import config, memory
from attnlab.config import ConfigError
from attnlab.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [None] + sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r or "defaults" for r in RECIPES])
def test_every_recipe_and_the_defaults_pass(recipe):
    cfg = composed(*([f"+experiment={recipe}"] if recipe else []), "device=cpu")
    task = make_task(cfg.data)
    config.check_memory(cfg, task)  # on this machine
    need = memory.estimate(cfg, task)
    assert need.total < 2**29, memory.size(need.total)  # and on one with 512 MB to spare


def test_the_floor_grows_with_each_size_it_names():
    base = memory.estimate(cfg := composed("device=cpu"), make_task(cfg.data))
    for key, value, part in [("data.batch_size", 12800, "batch"), ("data.val_size", 10**6, "validation"),
                             ("model.dim", 4096, "model")]:
        bigger = composed("device=cpu", f"{key}={value}")
        need = memory.estimate(bigger, make_task(bigger.data))
        assert getattr(need, part) > 10 * getattr(base, part) and need.largest() == key, key


def test_each_validation_length_counts():
    base = memory.estimate(cfg := composed("device=cpu", "data=copy", "+data.min_len=2"), make_task(cfg.data))
    longer = composed("device=cpu", "data=copy", "+data.min_len=2", "+data.val_lengths=[8,512]")
    need = memory.estimate(longer, make_task(longer.data))
    # 1000 examples of 512 tokens kept, and a chunk's [1000, 1, 513, 513] attention weights: 1 GB more at least
    assert need.validation - base.validation > 2**30 and need.batch == base.batch


def test_refused_where_the_machine_has_less(monkeypatch):
    cfg = composed("device=cpu")
    need = memory.estimate(cfg, make_task(cfg.data))
    monkeypatch.setattr(memory, "available", lambda: (need.total - 1, "MemAvailable"))
    with pytest.raises(ConfigError, match=r"^data.val_size=1000: this run needs at least 30\d MB of memory .* this "
                                          r"machine has 30\d MB available \(MemAvailable\)"):
        config.check_memory(cfg, make_task(cfg.data))
    monkeypatch.setattr(memory, "available", lambda: (need.total, "MemAvailable"))
    config.check_memory(cfg, make_task(cfg.data))
    monkeypatch.setattr(memory, "available", lambda: None)  # memory that cannot be read: nothing refused
    config.check_memory(composed("device=cpu", "data.batch_size=100000000"), make_task(cfg.data))


@pytest.mark.parametrize("override, key", [("data.batch_size=100000000", "data.batch_size"),
                                           ("data.val_size=100000000", "data.val_size"),
                                           ("model.dim=100000", "model.dim")])
def test_a_typo_in_a_size_is_refused_before_training(tmp_path, script_runs, override, key):
    out = tmp_path / "run"
    (result,) = script_runs.run(Path("scripts/train.py"), [[override, "device=cpu", f"hydra.run.dir={out}"]], ROOT)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {override}: this run needs at least ") and " available (" in line, line
    assert not out.exists()
