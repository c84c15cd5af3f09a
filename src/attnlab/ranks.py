"""What each process of a multi-process run trains with, written by that process: ranks/rank{r}.json.

Data-parallel training is right only if every rank trains the same model with the same hyperparameters (on
different batches). A launcher that re-runs the command line per rank can break that without an error (under -m
each rank would run the whole sweep, with Optuna each would draw its own trial), so each rank writes down what it
actually holds, read from its own objects, and the files can be compared (tests/test_sweep_ddp.py does).
"""

import hashlib
import json
from pathlib import Path

import lightning.pytorch as L
import torch

RANKS_DIR = "ranks"


class RankRecord(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        model, data = module.model, trainer.datamodule
        attention = model.blocks[0].attention
        optimizer = trainer.optimizers[0].param_groups[0]
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            # hyperparameters, read from the objects this process trains
            "dim": attention.dim,
            "heads": attention.heads,
            "layers": len(model.blocks),
            "lr": optimizer.get("initial_lr", optimizer["lr"]),
            "weight_decay": optimizer["weight_decay"],
            "batch_size": data.batch_size,
            "seed": data.seed,
            "max_steps": trainer.max_steps,
            "threads": torch.get_num_threads(),  # this process' share of the cores
            # the first batch this rank trains on: ranks must differ here, or they compute the same gradient
            "first_batch": hashlib.sha1(batch[0].cpu().numpy().tobytes()).hexdigest()[:12],
        }
        path = self.run_dir / RANKS_DIR / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")


class FinalCheckpoint(L.Callback):
    """The checkpoint of the weights training ended with, saved by the ranks themselves (rank 0 writes it): under
    ddp_spawn the job's own process gets the weights back but neither the optimiser nor the loop state, so a
    checkpoint saved there would not resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # on every rank: Lightning writes from rank 0 only
