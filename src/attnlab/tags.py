"""Every TensorBoard tag the project writes (a contract: docs and tests rely on these names)."""

STAGES = ("train", "val")
METRICS = ("loss", "acc", "seq_acc")
WEIGHTS = ("W_Q", "W_K", "W_V", "W_O")

CONFIG = "config"  # text: the resolved config
PROBE_TOKENS = "probe/tokens"  # text: the probe example, position by position


def metric(stage: str, name: str) -> str:
    return f"{stage}/{name}"


def attention(layer: int, head: int) -> str:
    return f"attention/layer{layer}/head{head}"


def weight(layer: int, name: str) -> str:
    return f"weights/layer{layer}/{name}"
