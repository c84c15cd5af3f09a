"""Every TensorBoard tag the project writes (a contract: docs and tests rely on these names)."""

STAGES = ("train", "val")
METRICS = ("loss", "acc", "seq_acc")
WEIGHTS = ("W_Q", "W_K", "W_V", "W_O")

CONFIG = "config"  # text: the resolved config
PROBE_TOKENS = "probe/tokens"  # text: the probe example, position by position


def metric(stage: str, name: str) -> str:
    return f"{stage}/{name}"


# data.val_lengths: the validation set of examples exactly `length` long, beside the training distribution's.
def length_stage(length: int) -> str:  # val/len{N}: its val/len{N}/loss, val/len{N}/acc, val/len{N}/seq_acc
    return f"val/len{length}"


# Scalar: the attention-supervision term (attnlab.alignment.supervision_loss, before loss.attention weighs it), at
# the logged training steps of runs with loss.attention > 0.
ATTENTION_LOSS = metric("train", "attention_loss")


def attention(layer: int, head: int) -> str:
    return f"attention/layer{layer}/head{head}"


def weight(layer: int, name: str) -> str:
    return f"weights/layer{layer}/{name}"


def weight_histogram(layer: int, name: str) -> str:
    # Not the image's tag: TensorBoard's data server keeps one kind of data per tag, and an image and a histogram
    # under one tag showed neither (TensorBoard 2.21; tests/test_tensorboard_server.py asks a real server).
    return f"weights/layer{layer}/{name}/histogram"


# Alignment with the task's target pattern (attnlab.alignment), at every validation; final values in metrics.json.
ALIGN_BEST = "align/best"  # the weakest layer's best head: every step of the mechanism has a head that does it


def align(layer: int, head: int, length: int | None = None) -> str:
    """Scalar in [0, 1]: share of attention mass on target cells; at one of data.val_lengths, align/len{N}/..."""
    return f"{align_prefix(length)}/layer{layer}/head{head}"


def align_selector(layer: int, selector: int, length: int | None = None) -> str:
    """Scalar in [0, 1]: the best head's alignment with selector S of a layer with per-head targets (the RASP
    programs'); align/layer{L}/head{H} is then head H's with its own selector H."""
    return f"{align_prefix(length)}/layer{layer}/selector{selector}"


def align_best(length: int | None = None) -> str:  # ALIGN_BEST, or align/len{N}/best at one of data.val_lengths
    return f"{align_prefix(length)}/best"


def align_prefix(length: int | None) -> str:
    return "align" if length is None else f"align/len{length}"


def entropy(layer: int, head: int) -> str:  # scalar: mean attention entropy in nats
    return f"entropy/layer{layer}/head{head}"


# Each head's score as a previous-token, duplicate-token, induction, first-token and self head (attnlab.heads), at
# every validation; final values in metrics.json and the sweep summary.
HEAD_KINDS = ("previous", "duplicate", "induction", "first", "self")


def head_kind(layer: int, head: int, kind: str) -> str:  # scalar in [0, 1]: share of attention on the kind's cells
    return f"heads/layer{layer}/head{head}/{kind}"


def target(layer: int, head: int | None = None) -> str:
    """Image: the probe example's target pattern, beside attention/layer{L}/head{H}; with per-head targets, head
    H's own (attention/layer{L}/target{H})."""
    return f"attention/layer{layer}/target" + ("" if head is None else str(head))


def qk_positional(layer: int, head: int) -> str:  # image: P·W_Q·W_Kᵀ·Pᵀ, the head's scores from positions alone
    return f"qk_positional/layer{layer}/head{head}"


# The Attention tab (TensorBoard plugin "attnlab", attnlab/tensorboard_plugin): at every image frame, one tensor
# summary per tag below, all under this plugin name. The plugin reads them back by these names.
PLUGIN = "attnlab"
FRAME_ATTENTION = "attnlab/attention"  # float16 [layer, head, query, key]: the probe example's attention weights
FRAME_ALIGNMENT = "attnlab/alignment"  # float32 [layer, head]: the probe's alignment, NaN where a layer has no target
FRAME_PROBE = "attnlab/probe"  # JSON string: tokens, the token each query predicts, target per layer, vocabulary
FRAME_WEIGHTS = "attnlab/weights"  # float16 [layer, 4, dim, dim]: W_Q, W_K, W_V, W_O (the order of WEIGHTS)
FRAME_EMBEDDING = "attnlab/embedding"  # float16 [vocab, dim]: token embedding
FRAME_POSITIONS = "attnlab/positions"  # float16 [query, dim]: position embedding at the probe's positions
FRAME_UNEMBEDDING = "attnlab/unembedding"  # float16 [vocab, dim]: the readout's weight (logits = x·Uᵀ + b)
# float32 [layer, head, kind]: the probe's head-detector scores (the order of HEAD_KINDS), NaN for a kind the probe has
# no row of; the tab names each head by its best kind. Runs from before it have none (the tab shows none).
FRAME_KINDS = "attnlab/head_kinds"
FRAME = (FRAME_ATTENTION, FRAME_ALIGNMENT, FRAME_PROBE, FRAME_WEIGHTS, FRAME_EMBEDDING, FRAME_POSITIONS,
         FRAME_UNEMBEDDING, FRAME_KINDS)
# With data.val_lengths, at every frame also a probe per length (the first example of that length's validation set):
# the tags above that depend on the probe, each as attnlab/len{N}/...; the weights are the frame's own.
FRAME_PER_PROBE = (FRAME_ATTENTION, FRAME_ALIGNMENT, FRAME_PROBE, FRAME_POSITIONS, FRAME_KINDS)


def frame_at(tag: str, length: int | None) -> str:
    """A tag of FRAME_PER_PROBE for the probe of data length `length` (attnlab/len{N}/attention, ...); the tag itself
    for the training distribution's probe (None)."""
    return tag if length is None else tag.replace(f"{PLUGIN}/", f"{PLUGIN}/len{length}/", 1)


def frame_length(tag: str) -> int | None:
    """The length of a frame_at tag (attnlab/len12/alignment -> 12); None for a tag of the training probe's frame."""
    prefix, _, rest = tag.partition("/len")
    length = rest.split("/", 1)[0]
    return int(length) if prefix == PLUGIN and length.isdigit() and "/" in rest else None
