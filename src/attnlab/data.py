"""A LightningDataModule over a task: fresh training batches from a seeded generator, a fixed validation set."""

import lightning.pytorch as L
import torch

from attnlab.tasks import Batch, Task

# The validation set depends on the task and its sizes only, not on the run's seed, so that runs of a sweep
# are scored on the same examples.
VALIDATION_SEED = 2**31 - 1
VALIDATION_BATCH = 1024


class Batches:
    """`steps` training batches, fresh from the generator. A plain iterable, not a DataLoader: each batch is
    already one tensor made in one call, so there is nothing to collate and no worker to start.

    It has a length so that Lightning does not prefetch: from an iterable without one, Lightning draws one batch
    ahead, and a checkpoint would then hold the generator one batch past the last trained one, so a resumed run
    would skip a batch (tests/test_resume.py checks resume is exact)."""

    def __init__(self, task: Task, batch_size: int, generator: torch.Generator, steps: int, repeat: int = 0):
        self.task, self.batch_size, self.generator, self.steps = task, batch_size, generator, steps
        # trainer.overfit_batches: the first `repeat` batches of the stream, over and over.
        self.repeat = repeat
        self.drawn = 0  # batches handed out so far, over resumes: where the overfit cycle goes on

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        if self.repeat:  # drawn afresh from the run's seed: the same batches after a resume
            generator = torch.Generator().manual_seed(self.generator.initial_seed())
            fixed = [self.task.sample(self.batch_size, generator) for _ in range(self.repeat)]
        for _ in range(self.steps):
            batch = fixed[self.drawn % self.repeat] if self.repeat else self.task.sample(self.batch_size, self.generator)
            self.drawn += 1
            yield batch

    # The generator's state and the count go into checkpoints (Lightning saves a loader's state_dict with its loop
    # state), so a resumed run draws the batches it would have drawn.
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = state.get("drawn", 0)  # checkpoints made before it was kept have none


class Chunks:
    """The validation set in slices of `size` examples (an iterable object: Lightning reads a plain list as
    several dataloaders)."""

    def __init__(self, batch: Batch, size: int):
        self.batch, self.size = batch, size

    def __len__(self) -> int:
        return -(-len(self.batch[0]) // self.size)

    def __iter__(self):
        for start in range(0, len(self.batch[0]), self.size):
            yield tuple(t[start : start + self.size] for t in self.batch)


class TaskDataModule(L.LightningDataModule):
    """Validation: the set drawn from the training distribution, then with data.val_lengths one set per length,
    every example of it exactly that long (Lightning's dataloader index i >= 1 is val_lengths[i - 1])."""

    def __init__(self, task: Task, batch_size: int, val_size: int, seed: int, batches_per_step: int = 1,
                 overfit_batches: int = 0, val_lengths: list[int] | None = None):
        super().__init__()
        self.task, self.batch_size, self.val_size = task, batch_size, val_size
        self.val_lengths = list(val_lengths or [])
        # trainer.accumulate_grad_batches (batches per optimiser step) and trainer.overfit_batches.
        self.batches_per_step, self.overfit_batches = batches_per_step, overfit_batches
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.validation: Batch | None = None
        self.validation_at: dict[int, Batch] = {}  # data.val_lengths: length -> its set

    def setup(self, stage: str) -> None:
        if self.validation is None:  # made once, however often fit/validate call setup
            self.validation = self.task.validation_set(self.val_size, torch.Generator().manual_seed(VALIDATION_SEED))
            self.validation_at = {
                n: self.task.validation_set(self.val_size, torch.Generator().manual_seed(VALIDATION_SEED), length=n)
                for n in self.val_lengths
            }
        if stage == "fit" and self.trainer is not None and self.trainer.world_size > 1:
            # Multi-process training: each rank draws its own batches (rank 0 the single-process stream), else
            # every rank would compute the same gradient. The CPU generator keeps 32 bits of a seed; the stride
            # (2^32 / golden ratio) keeps the ranks' seeds far from the small seeds of other runs.
            self.generator.manual_seed((self.seed + self.trainer.global_rank * 0x9E3779B9) % 2**32)

    def train_dataloader(self) -> Batches:
        # One "epoch" is the whole run. A resumed run gets a fresh iterator, which goes on where the restored
        # generator left off.
        steps = self.trainer.max_steps * self.batches_per_step
        return Batches(self.task, self.batch_size, self.generator, steps, self.overfit_batches)

    def val_dataloader(self) -> "Chunks | list[Chunks]":
        if not self.val_lengths:
            return Chunks(self.validation, VALIDATION_BATCH)
        return [Chunks(s, VALIDATION_BATCH) for s in (self.validation, *self.validation_at.values())]

    # ddp_spawn pickles the datamodule to each rank, and torch.multiprocessing fails to send a torch.Generator
    # (its state is a temporary tensor, freed before the rank reads it): send the state as plain bytes.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "generator": self.generator.get_state().numpy().tobytes()}

    def __setstate__(self, state: dict) -> None:
        generator = torch.Generator().set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update(state, generator=generator)

    def probe(self, length: int | None = None) -> Batch:
        """The one fixed example whose attention is drawn: the first of the validation set (of the set at data length
        `length`, one of data.val_lengths). Cut to its real length: a variable-length example's right-hand pads
        (Task.padding) are no tokens, and the model computes the same without them."""
        self.setup("fit")
        inputs, targets, mask = self.validation if length is None else self.validation_at[length]
        width = inputs.shape[1]
        if self.task.padding is not None:  # padding is on the right: the real tokens are the first ones
            width = int((inputs[0] != self.task.padding).sum())
        return inputs[:1, :width], targets[:1, :width], mask[:1, :width]
