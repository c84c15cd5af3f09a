"""Train one run (or a sweep with -m) from the Hydra config in conf/.

    python scripts/train.py model.dim=64 data=sort device=cpu
    python scripts/train.py -m model.dim=16,32,64 model.heads=1,2
"""

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attnlab.config import ConfigError
from attnlab.train import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        # Nothing was trained: remove the directory Hydra made, so no run looks real that is not.
        if not any(p.name.startswith("events.out") for p in run_dir.rglob("*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        sys.exit(2)
    print(f"\nRun saved in {run_dir}\nView it with:  tensorboard --logdir {run_dir}")
    return metrics["val/seq_acc"]


if __name__ == "__main__":
    main()
