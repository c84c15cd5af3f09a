"""Heatmaps for TensorBoard: colormap lookup into palette images, PNG-encoded by callbacks.png_summary."""

import io

import numpy as np
import torch
from PIL import Image

from attnlab import viz
from attnlab.callbacks import png_summary


def decoded(image: Image.Image) -> np.ndarray:
    """What TensorBoard gets: the PNG bytes of the summary, decoded to RGB pixels."""
    (value,) = png_summary("tag", image).value
    assert (value.image.width, value.image.height) == image.size
    return np.array(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))


def test_each_value_is_drawn_in_its_colormap_colour_scaled_up_by_whole_pixels():
    values = torch.tensor([[-1.0, -0.5, 0.0], [0.25, 1.0, 3.0]])  # 3.0 is outside the scale: clipped to its end
    pixels = decoded(viz.weight_image(values, 1.0))
    scale = viz.TARGET_SIZE // 3
    assert pixels.shape == (2 * scale, 3 * scale, 3)
    table = viz.colormap("RdBu_r").numpy()
    expected = [[0, 64, 128], [159, 255, 255]]  # round((v + 1) / 2 * 255), clipped
    for row in range(2):
        for col in range(3):
            block = pixels[row * scale : (row + 1) * scale, col * scale : (col + 1) * scale]
            assert (block == table[expected[row][col]]).all(), (row, col)


def test_attention_maps_use_viridis_from_0_to_1():
    pattern = torch.eye(4)
    pixels = decoded(viz.attention_image(pattern))
    table = viz.colormap("viridis").numpy()
    scale = viz.TARGET_SIZE // 4
    assert (pixels[0, 0] == table[255]).all() and (pixels[0, scale] == table[0]).all()
