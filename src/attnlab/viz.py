"""Tensors -> heatmap images by colormap lookup: no matplotlib figure is drawn, so logging stays cheap."""

from functools import lru_cache

import torch
from torch import Tensor

TARGET_SIZE = 256  # pixels along the longer side; small matrices are scaled up by whole pixels


@lru_cache(maxsize=None)
def colormap(name: str) -> Tensor:
    """matplotlib's colormap as a [256, 3] uint8 lookup table."""
    import matplotlib  # imported on first use: it is not needed to start training

    table = matplotlib.colormaps[name](torch.linspace(0, 1, 256).numpy())[:, :3]
    return torch.from_numpy(table * 255).round().to(torch.uint8)


def heatmap(values: Tensor, vmin: float, vmax: float, cmap: str) -> Tensor:
    """[rows, cols] -> [3, H, W] uint8 image; values outside [vmin, vmax] are clipped to its ends."""
    values = values.detach().float().cpu()
    index = ((values - vmin) / (vmax - vmin) * 255).round().clamp(0, 255).long()
    image = colormap(cmap)[index]  # [rows, cols, 3]
    scale = max(1, TARGET_SIZE // max(values.shape))
    image = image.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return image.permute(2, 0, 1).contiguous()


def attention_image(weights: Tensor) -> Tensor:
    """Attention weights [query, key] in [0, 1]: rows are queries, columns keys."""
    return heatmap(weights, 0.0, 1.0, "viridis")


def weight_image(matrix: Tensor, scale: float) -> Tensor:
    """A weight matrix on a fixed symmetric scale [-scale, scale]: blue negative, white zero, red positive."""
    return heatmap(matrix, -scale, scale, "RdBu_r")
