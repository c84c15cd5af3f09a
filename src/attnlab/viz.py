"""Tensors -> heatmap images by colormap lookup: no matplotlib figure is drawn, so logging stays cheap."""

import math
from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor


@lru_cache(maxsize=None)
def colormap(name: str) -> Tensor:
    """matplotlib's colormap as a [256, 3] uint8 lookup table."""
    import matplotlib  # imported on first use: it is not needed to start training

    table = matplotlib.colormaps[name](torch.linspace(0, 1, 256).numpy())[:, :3]
    return torch.from_numpy(table * 255).round().to(torch.uint8)


def heatmap(values: Tensor, vmin: float, vmax: float, cmap: str) -> Image.Image:
    """[rows, cols] -> a palette image, one pixel per value: each pixel holds the index of its colour in the
    colormap's 256, so the PNG is one byte per pixel, not three: less to encode and to checksum while training.
    Not scaled up: TensorBoard draws images to the width of its cards with crisp pixels (image-rendering:
    pixelated), so an 8x8 map shows as 8x8 squares; scaling up here only made the PNGs bigger and slower to write.
    Values outside [vmin, vmax] are clipped to its ends."""
    values = values.detach().float().cpu()
    index = ((values - vmin) / (vmax - vmin) * 255).round().clamp(0, 255).to(torch.uint8)  # [rows, cols]
    image = Image.fromarray(index.numpy(), mode="L")
    image.putpalette(colormap(cmap).numpy().tobytes())  # 256 RGB triples; mode "L" -> "P"
    return image


def attention_image(weights: Tensor) -> Image.Image:
    """Attention weights [query, key] in [0, 1]: rows are queries, columns keys."""
    return heatmap(weights, 0.0, 1.0, "viridis")


def default_weight_scale(dim: int) -> float:
    """logging.weight_scale when null: 4/sqrt(model.dim), one colour scale for every frame of a run."""
    return 4 / math.sqrt(dim)


def weight_image(matrix: Tensor, scale: float) -> Image.Image:
    """A weight matrix on a fixed symmetric scale [-scale, scale]: blue negative, white zero, red positive."""
    return heatmap(matrix, -scale, scale, "RdBu_r")
