"""What goes to TensorBoard beyond Lightning's scalars: the probe example's attention maps and the weights."""

import io
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from attnlab import tags, viz
from attnlab.tensorboard_plugin import summary as attention_tab
from attnlab.tasks import Batch


def tokens_table(names: list[str], inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> str:
    """Markdown table of the probe example: which token sits in each row/column of the attention maps."""
    row = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    n = len(inputs)
    return "\n".join(
        [
            row(["position"] + [str(i) for i in range(n)]),
            row(["---"] * (n + 1)),
            row(["input"] + [names[t] for t in inputs.tolist()]),
            row(["target"] + [names[t] if m else "·" for t, m in zip(targets.tolist(), mask.tolist())]),
        ]
    )


def positional_qk(attention, positions: torch.Tensor) -> torch.Tensor:
    """Each head's scores from positions alone, P·W_Q·W_Kᵀ·Pᵀ / sqrt(d_head): [head, query pos, key pos]."""
    d = attention.d_head
    query = (positions @ attention.W_Q).view(len(positions), attention.heads, d).transpose(0, 1)  # [head, pos, d]
    key = (positions @ attention.W_K).view(len(positions), attention.heads, d).transpose(0, 1)
    scores = query @ key.transpose(1, 2) / d**0.5
    if attention.causal:  # future keys are masked out of the attention: show them as 0
        scores = scores.tril()
    return scores


# Histogram buckets: 30 even ones over the values' range, as TensorBoard's own summary API makes them. torch's
# default ("tensorflow", ~1500 exponential buckets) makes a record 15x the size, and the event writer checksums
# every byte in pure Python, holding the GIL the training thread needs.
HISTOGRAM_BINS = 30


def write_image(writer, tag: str, image: Image.Image, step: int) -> None:
    """An image into the SummaryWriter's event file, PNG-encoded at zlib level 1. Not torch's add_image: it takes
    RGB only, converts the pixels to float and back, resamples (at scale 1) and compresses at level 6, about ten
    times the time for the same picture from viz's palette image (python scripts/bench.py --sections logging
    measures what logging costs a run)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    png = buffer.getvalue()
    encoded = Summary.Image(height=image.height, width=image.width, colorspace=3, encoded_image_string=png)
    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


class BackgroundWriter:
    """Images and histograms for the logger's SummaryWriter, drawn and written on one thread of their own, in
    order.

    Drawing and encoding a frame's images is most of what the default logging costs (python scripts/bench.py
    --sections logging); on a thread, that work overlaps the training steps that follow (torch and PIL release the
    GIL in their kernels). A frame's writes are collected and handed over together (send): the thread starts on them once the
    training thread has gone back to training, instead of taking the GIL from it at each image of the frame. A
    failed write is raised at the next frame or at close(), not lost."""

    def __init__(self, writer):
        self.writer, self.thread, self.pending, self.frame = writer, ThreadPoolExecutor(max_workers=1), [], []

    def submit(self, work) -> None:
        """work() on the thread, after what was submitted before."""
        for done in [f for f in self.pending if f.done()]:
            self.pending.remove(done)
            done.result()  # raises what the write raised
        self.pending.append(self.thread.submit(work))

    def add_image(self, tag: str, draw, values: torch.Tensor, step: int) -> None:
        """draw(values) -> a PIL image (viz.attention_image, say), drawn on the thread from a copy of values:
        training goes on updating the weights in place while the image waits its turn."""
        values = values.detach().cpu().clone()
        self.frame.append(lambda: write_image(self.writer, tag, draw(values), step))

    def add_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        values = values.detach().cpu().clone()  # a copy, as in add_image
        self.frame.append(lambda: self.writer.add_histogram(tag, values, step, HISTOGRAM_BINS))

    def add(self, write) -> None:
        """write() on the thread with the rest of the frame; it must hold copies of what it writes (as add_image)."""
        self.frame.append(write)

    def send(self) -> None:
        """Hands the writes added since the last send to the thread."""
        writes, self.frame = self.frame, []
        self.submit(lambda: [write() for write in writes])

    def close(self) -> None:
        if self.frame:
            self.send()
        self.thread.shutdown(wait=True)
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()


class AttentionImages(L.Callback):
    """Every `every_n_steps` optimiser steps (and at the first and last), runs the probe example through the
    model with its attention weights and logs, per layer and head, the attention map, and per layer the
    W_Q/W_K/W_V/W_O images (and histograms). Weight images share one colour scale for the whole run so that
    frames compare across steps. With `targets` (the probe's target pattern per layer, [1, query, key] or None)
    the target is logged once beside the attention maps; layer 0's positional QK circuit is logged per head. Each
    frame also goes to the Attention tab as tensors (attnlab.tensorboard_plugin.summary), on the same thread.

    `at_lengths` (data.val_lengths): per data length, its probe and that probe's targets. Each goes to the Attention
    tab only, at every frame (one more forward pass of one example and a few KB each): no images per length, whose
    drawing and encoding is most of what logging costs (python scripts/bench.py --sections logging), for pictures
    the tab already shows."""

    def __init__(
        self,
        probe: Batch,
        token_names: list[str],
        every_n_steps: int,
        histograms: bool,
        weight_scale: float,
        targets: list[torch.Tensor | None] = (),
        at_lengths: dict[int, tuple[Batch, list[torch.Tensor | None]]] | None = None,
    ):
        self.probe, self.token_names, self.targets = probe, token_names, targets
        self.at_lengths = at_lengths or {}
        self.every_n_steps, self.histograms, self.weight_scale = every_n_steps, histograms, weight_scale
        self.last_logged = -1
        self.writer: BackgroundWriter | None = None  # made at the first frame, in the process that trains

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        inputs, targets, mask = self.probe
        trainer.logger.experiment.add_text(tags.PROBE_TOKENS, tokens_table(self.token_names, inputs[0], targets[0], mask[0]))
        for layer, target in enumerate(self.targets):
            if target is not None and target.dim() == 4:  # per-head targets [1, head, query, key]: one image each
                for head, pattern in enumerate(target[0]):
                    write_image(trainer.logger.experiment, tags.target(layer, head), viz.attention_image(pattern), 0)
            elif target is not None:
                write_image(trainer.logger.experiment, tags.target(layer), viz.attention_image(target[0]), 0)
        self.log_frame(trainer, module)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.log_frame(trainer, module)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.log_frame(trainer, module)
        self.close()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Waits for the frames still being written."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    @torch.no_grad()
    def log_frame(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.last_logged:
            return
        self.last_logged = step
        if self.writer is None:
            self.writer = BackgroundWriter(trainer.logger.experiment)
        writer = self.writer
        was_training = module.training
        module.eval()
        _, attention = module(self.probe[0].to(module.device), need_weights=True)
        attention_at = {n: module(probe[0].to(module.device), need_weights=True)[1]
                        for n, (probe, _) in self.at_lengths.items()}  # per length, per layer [1, head, query, key]
        module.train(was_training)
        for layer, weights in enumerate(attention):  # [batch, head, query, key]
            for head, pattern in enumerate(weights[0]):
                writer.add_image(tags.attention(layer, head), viz.attention_image, pattern, step)
        positions = module.model.positions[: self.probe[0].shape[1]]  # [pos, dim]
        if positions.any():  # all zero with model.positions=none: nothing to show
            for head, scores in enumerate(positional_qk(module.model.blocks[0].attention, positions)):
                # Each frame on its own symmetric scale (scores grow as training goes): the pattern is the point.
                scale = scores.abs().max().item() or 1.0
                writer.add_image(tags.qk_positional(0, head), partial(viz.weight_image, scale=scale), scores, step)
        model, (inputs, targets, mask) = module.model, self.probe
        attention_tab.add_frame(
            writer, step, attention=torch.stack([weights[0] for weights in attention]),  # [layer, head, query, key]
            token_names=self.token_names, inputs=inputs[0], targets=targets[0], mask=mask[0],
            patterns=[None if t is None else t[0] for t in self.targets] or [None] * len(attention),
            causal=model.blocks[0].attention.causal,
            weights=torch.stack([torch.stack([getattr(b.attention, w) for w in tags.WEIGHTS]) for b in model.blocks]),
            embedding=model.embedding.weight, positions=model.positions[: inputs.shape[1]],
            unembedding=model.readout.weight,
        )
        for length, ((inputs, targets, mask), patterns) in self.at_lengths.items():
            attention = attention_at[length]
            attention_tab.add_length_frame(
                writer, step, length, attention=torch.stack([weights[0] for weights in attention]),
                token_names=self.token_names, inputs=inputs[0], targets=targets[0], mask=mask[0],
                patterns=[None if t is None else t[0] for t in patterns] or [None] * len(attention),
                causal=model.blocks[0].attention.causal, positions=model.positions[: inputs.shape[1]],
            )
        weight_image = partial(viz.weight_image, scale=self.weight_scale)
        for layer, block in enumerate(module.model.blocks):
            for name in tags.WEIGHTS:
                matrix = getattr(block.attention, name)
                writer.add_image(tags.weight(layer, name), weight_image, matrix, step)
                if self.histograms:
                    writer.add_histogram(tags.weight_histogram(layer, name), matrix, step)
        writer.send()
