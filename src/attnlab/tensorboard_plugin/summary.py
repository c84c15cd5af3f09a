"""What the Attention tab reads: one frame per logged step, written as tensor summaries of the plugin "attnlab".

A frame is one event holding a tensor per tag of tags.FRAME: the probe example's attention for every layer and head,
its alignment, the labels (tokens, the token each query row should predict, target pattern per layer), and the
weights the QK/OV circuits are computed from at read time (W_Q, W_K, W_V, W_O per layer, the token and position
embeddings, the readout). Matrices are float16: enough for a heatmap, half the bytes. A frame of the default model
(1 layer, 1 head, dim 32, reverse of 8) is about 11 KB, 8 KB of it the four weight matrices.

Every frame carries its labels too (a few hundred bytes): a frame read alone, or the one step TensorBoard kept of a
tag after downsampling, is complete.

With data.val_lengths a frame also holds a probe per length (the first example of that length's validation set):
its attention, alignment, labels and positions under tags.frame_at(tag, length), in an event of its own at the same
step. The weights are not repeated: the circuits at a length read the frame's own (TensorBoard downsamples every tag
of a run's frames alike, as their steps are the same).
"""

import json

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_FLOAT, DT_HALF
from tensorboard.util.tensor_util import make_tensor_proto

from attnlab import tags
from attnlab import heads
from attnlab.alignment import alignment

# Plugin data content: the frame layout's version, for a reader to refuse frames it does not know.
VERSION = 1
CONTENT = json.dumps({"version": VERSION}).encode()


def metadata() -> SummaryMetadata:
    # DATA_CLASS_TENSOR: without a data class TensorBoard's data server drops the summaries without a word.
    return SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=tags.PLUGIN, content=CONTENT),
        data_class=DATA_CLASS_TENSOR,
    )


def tensor_proto(values: np.ndarray) -> TensorProto:
    """A float16/float32 array as its raw bytes. Not make_tensor_proto: it stores float16 one Python int per value
    (half_val), slow to build and three times the size."""
    dtype = {np.dtype(np.float16): DT_HALF, np.dtype(np.float32): DT_FLOAT}[values.dtype]
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=n) for n in values.shape])
    content = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()  # protobuf's byte order
    return TensorProto(dtype=dtype, tensor_shape=shape, tensor_content=content)


def half(t: torch.Tensor) -> torch.Tensor:
    """A float16 copy on the CPU, taken on the training thread: training goes on updating the weights in place
    while the frame waits for the writer thread."""
    return t.detach().to("cpu", torch.float16, copy=True)


def target_cells(pattern: torch.Tensor) -> list[list]:
    """[query, key] -> [[query, key, weight], ...] of its nonzero cells."""
    cells = pattern.nonzero()  # [cell, 2]
    return [[q, k, w] for (q, k), w in zip(cells.tolist(), pattern[cells[:, 0], cells[:, 1]].tolist())]


def cells_pattern(cells: list[list], shape) -> torch.Tensor:
    """target_cells' list back into a [query, key] pattern."""
    target = torch.zeros(shape)
    for query, key, weight in cells:
        target[query, key] = weight
    return target


def probe_labels(token_names: list[str], inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                 patterns: list[torch.Tensor | None], causal: bool) -> dict:
    """The probe as the tab labels it. inputs/targets/mask: [query]; patterns per layer [query, key] (any head's),
    [head, query, key] (per-head targets: {"heads": cells per head}) or None."""
    return {
        "vocab": list(token_names),
        "tokens": inputs.tolist(),  # token id at each position
        "predict": [t if m else None for t, m in zip(targets.tolist(), mask.tolist())],  # None: position not scored
        # Per layer the target's cells as [query, key, weight] (a few per row, the rest zero), or None.
        "targets": [None if p is None else {"heads": [target_cells(h) for h in p]} if p.dim() == 3
                    else target_cells(p) for p in patterns],
        "causal": bool(causal),
    }


def probe_tensors(attention: torch.Tensor, labels: dict, positions: torch.Tensor) -> dict[str, TensorProto]:
    """The tensors of tags.FRAME_PER_PROBE (what depends on the probe example), by tag. attention [layer, head,
    query, key], positions [query, dim]; the alignment is computed here from the labels' target cells."""
    align = np.full(attention.shape[:2], np.nan, dtype=np.float32)  # [layer, head]
    for layer, cells in enumerate(labels["targets"]):
        if isinstance(cells, dict):  # per-head targets: each head against its own
            for head, own in enumerate(cells["heads"][: attention.shape[1]]):
                align[layer, head] = alignment(attention[layer, head : head + 1].float().unsqueeze(0),
                                               cells_pattern(own, attention.shape[2:]).unsqueeze(0)).item()
        elif cells is not None:
            target = cells_pattern(cells, attention.shape[2:])
            align[layer] = alignment(attention[layer].float().unsqueeze(0), target.unsqueeze(0)).numpy()
    tokens = torch.tensor([labels["tokens"]])  # [1, pos]
    kinds = np.stack([  # [layer, head, kind]
        np.stack([score.numpy() for score in heads.scores(a.float().unsqueeze(0), tokens, labels["causal"]).values()], -1)
        for a in attention
    ]).astype(np.float32)
    return {
        tags.FRAME_ATTENTION: tensor_proto(attention.numpy()),
        tags.FRAME_ALIGNMENT: tensor_proto(align),
        tags.FRAME_PROBE: make_tensor_proto(json.dumps(labels, separators=(",", ":"))),
        tags.FRAME_POSITIONS: tensor_proto(positions.numpy()),
        tags.FRAME_KINDS: tensor_proto(kinds),
    }


def summary(tensors: dict[str, TensorProto]) -> Summary:
    meta = metadata()
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor) for tag, tensor in tensors.items()])


def frame_summary(attention: torch.Tensor, labels: dict, weights: torch.Tensor, embedding: torch.Tensor,
                  positions: torch.Tensor, unembedding: torch.Tensor) -> Summary:
    """One frame as a Summary with a value per tag of tags.FRAME (shapes there)."""
    tensors = {
        **probe_tensors(attention, labels, positions),
        tags.FRAME_WEIGHTS: tensor_proto(weights.numpy()),
        tags.FRAME_EMBEDDING: tensor_proto(embedding.numpy()),
        tags.FRAME_UNEMBEDDING: tensor_proto(unembedding.numpy()),
    }
    return summary({tag: tensors[tag] for tag in tags.FRAME})


def length_summary(length: int, attention: torch.Tensor, labels: dict, positions: torch.Tensor) -> Summary:
    """The probe of data length `length` at one frame: a value per tag of tags.FRAME_PER_PROBE, as
    tags.frame_at(tag, length). The circuits at that length read the weights of the frame's own step."""
    return summary({tags.frame_at(tag, length): t for tag, t in probe_tensors(attention, labels, positions).items()})


def add_frame(writer, step: int, *, attention: torch.Tensor, token_names: list[str], inputs: torch.Tensor,
              targets: torch.Tensor, mask: torch.Tensor, patterns: list[torch.Tensor | None], causal: bool,
              weights: torch.Tensor, embedding: torch.Tensor, positions: torch.Tensor,
              unembedding: torch.Tensor) -> None:
    """Adds the Attention tab's frame of `step` to a callbacks.BackgroundWriter's current frame: copied here, on the
    training thread (float16), encoded and written on the writer's thread.

    attention [layer, head, query, key]; inputs, targets, mask [query] (the probe example); patterns: the target
    pattern per layer, [query, key], [head, query, key] (per-head targets) or None; weights [layer, 4, dim, dim] (W_Q, W_K, W_V, W_O); embedding and
    unembedding [vocab, dim]; positions [query, dim]."""
    copies = [half(t) for t in (attention, weights, embedding, positions, unembedding)]
    file_writer = writer.writer.file_writer

    def write() -> None:  # the probe and its targets are never changed: read on the thread, as they are
        labels = probe_labels(token_names, inputs, targets, mask, patterns, causal)
        file_writer.add_summary(frame_summary(copies[0], labels, *copies[1:]), step)

    writer.add(write)


def add_length_frame(writer, step: int, length: int, *, attention: torch.Tensor, token_names: list[str],
                     inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                     patterns: list[torch.Tensor | None], causal: bool, positions: torch.Tensor) -> None:
    """As add_frame, for the probe of data length `length` (data.val_lengths): its attention, labels and positions
    only, a few hundred bytes plus the attention map's float16 values."""
    copies = [half(t) for t in (attention, positions)]
    file_writer = writer.writer.file_writer

    def write() -> None:
        labels = probe_labels(token_names, inputs, targets, mask, patterns, causal)
        file_writer.add_summary(length_summary(length, copies[0], labels, copies[1]), step)

    writer.add(write)
