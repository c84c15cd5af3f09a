"""The stacked data: StackedBatches and StackedData, each member's batches from its own generator."""

import lightning.pytorch as L
import torch

from attnlab.data import VALIDATION_BATCH, Chunks, TaskDataModule

# ---- the data: each member's batches from its own generator ---------------------------------------------------------


class StackedBatches:
    """data.Batches for every member still stacked, stacked: (inputs, targets, mask) [member, batch, ...], member k's
    drawn from its own generator, as its solo run draws them, and which members they were drawn for (Lightning draws
    a batch ahead: one drawn before members were dropped has rows for them). Its state (in the checkpoint's loop
    state) is every stacked member's generator state."""

    def __init__(self, members: list[TaskDataModule], steps: int):
        self.members, self.steps = members, steps  # the list StackedData.keep shortens in place

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            batches = [m.task.sample(m.batch_size, m.generator) for m in self.members]
            yield *(torch.stack(parts) for parts in zip(*batches)), tuple(map(id, self.members))

    def state_dict(self) -> dict:
        return {"generators": [m.generator.get_state() for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        for m, generator in zip(self.members, state["generators"]):
            m.generator.set_state(generator)


class StackedData(L.LightningDataModule):
    """The members' TaskDataModules as one: stacked training batches, and the validation set they share (it depends
    on the task and its sizes only, the same for every member of a group)."""

    def __init__(self, members: list[TaskDataModule]):
        super().__init__()
        self.members = members

    def setup(self, stage: str) -> None:
        first = self.members[0]
        first.setup(stage)
        for m in self.members[1:]:
            m.validation, m.validation_at = first.validation, first.validation_at  # one copy, not K

    @property
    def validation(self):
        return self.members[0].validation

    @property
    def validation_at(self):
        return self.members[0].validation_at

    @property
    def val_lengths(self):
        return self.members[0].val_lengths

    def keep(self, members: list[TaskDataModule]) -> None:
        """Batches for these members only from now on (StackedLM drops the members that stopped)."""
        self.members[:] = members

    def train_dataloader(self) -> StackedBatches:
        return StackedBatches(self.members, self.trainer.max_steps)

    def val_dataloader(self) -> Chunks | list[Chunks]:
        return self.members[0].val_dataloader()
