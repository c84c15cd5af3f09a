"""Heatmaps for TensorBoard: colormap lookup into palette images, PNG-encoded by callbacks.write_image."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from attnlab import viz
from attnlab.callbacks import write_image


@pytest.fixture
def decoded(tmp_path):
    """What TensorBoard reads back: the image written to an event file, decoded to RGB pixels."""

    def decode(image: Image.Image) -> np.ndarray:
        writer = SummaryWriter(tmp_path)
        write_image(writer, "tag", image, 0)
        writer.close()
        (event,) = EventAccumulator(str(tmp_path)).Reload().Images("tag")
        assert (event.width, event.height) == image.size
        return np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))

    return decode


def test_each_value_is_drawn_in_its_colormap_colour_scaled_up_by_whole_pixels(decoded):
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


def test_attention_maps_use_viridis_from_0_to_1(decoded):
    pattern = torch.eye(4)
    pixels = decoded(viz.attention_image(pattern))
    table = viz.colormap("viridis").numpy()
    scale = viz.TARGET_SIZE // 4
    assert (pixels[0, 0] == table[255]).all() and (pixels[0, scale] == table[0]).all()
