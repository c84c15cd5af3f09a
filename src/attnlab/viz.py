"""Tensors -> heatmap images by colormap lookup: no matplotlib figure is drawn, so logging stays cheap."""

from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor

TARGET_SIZE = 256  # pixels along the longer side; small matrices are scaled up by whole pixels


@lru_cache(maxsize=None)
def colormap(name: str) -> Tensor:
    """matplotlib's colormap as a [256, 3] uint8 lookup table."""
    import matplotlib  # imported on first use: it is not needed to start training

    table = matplotlib.colormaps[name](torch.linspace(0, 1, 256).numpy())[:, :3]
    return torch.from_numpy(table * 255).round().to(torch.uint8)


def heatmap(values: Tensor, vmin: float, vmax: float, cmap: str) -> Image.Image:
    """[rows, cols] -> a palette image: each pixel holds the index of its colour in the colormap's 256, so the
    PNG is one byte per pixel, not three: smaller, and quicker to encode, for the same picture (issue 5).
    Values outside [vmin, vmax] are clipped to its ends."""
    values = values.detach().float().cpu()
    index = ((values - vmin) / (vmax - vmin) * 255).round().clamp(0, 255).to(torch.uint8)
    scale = max(1, TARGET_SIZE // max(values.shape))
    index = index.repeat_interleave(scale, 0).repeat_interleave(scale, 1)  # [H, W]
    image = Image.fromarray(index.numpy(), mode="L")
    image.putpalette(colormap(cmap).flatten().tolist())  # mode "L" -> "P"
    return image


def attention_image(weights: Tensor) -> Image.Image:
    """Attention weights [query, key] in [0, 1]: rows are queries, columns keys."""
    return heatmap(weights, 0.0, 1.0, "viridis")


def weight_image(matrix: Tensor, scale: float) -> Image.Image:
    """A weight matrix on a fixed symmetric scale [-scale, scale]: blue negative, white zero, red positive."""
    return heatmap(matrix, -scale, scale, "RdBu_r")
