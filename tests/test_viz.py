"""Heatmaps for TensorBoard: colormap lookup into palette images, PNG-encoded by callbacks.write_image."""

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from attnlab import viz
from attnlab.callbacks import BackgroundWriter, write_image


def read_back(logdir) -> np.ndarray:
    """What TensorBoard reads back: the one image of "tag" in the event file, decoded to RGB pixels [rows, cols, 3]."""
    (event,) = EventAccumulator(str(logdir)).Reload().Images("tag")
    pixels = np.array(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    assert (event.height, event.width) == pixels.shape[:2]
    return pixels


@pytest.fixture
def decoded(tmp_path):
    """An image written by write_image, as TensorBoard reads it back."""

    def decode(image: Image.Image) -> np.ndarray:
        writer = SummaryWriter(tmp_path)
        write_image(writer, "tag", image, 0)
        writer.close()
        pixels = read_back(tmp_path)
        assert pixels.shape[:2] == (image.height, image.width)
        return pixels

    return decode


def test_each_value_is_one_pixel_in_its_colormap_colour(decoded):
    values = torch.tensor([[-1.0, -0.5, 0.0], [0.25, 1.0, 3.0]])  # 3.0 is outside the scale: clipped to its end
    pixels = decoded(viz.weight_image(values, 1.0))
    assert pixels.shape == (2, 3, 3)  # [rows, cols, RGB]: TensorBoard scales it up, with crisp pixels
    table = viz.colormap("RdBu_r").numpy()
    expected = [[0, 64, 128], [159, 255, 255]]  # round((v + 1) / 2 * 255), clipped
    assert (pixels == table[expected]).all()


def test_attention_maps_use_viridis_from_0_to_1(decoded):
    pattern = torch.eye(4)
    pixels = decoded(viz.attention_image(pattern))
    table = viz.colormap("viridis").numpy()
    assert (pixels == table[(pattern * 255).long().numpy()]).all()


def test_background_frames_show_the_values_as_they_were_when_logged(tmp_path):
    writer = SummaryWriter(tmp_path)
    background = BackgroundWriter(writer)
    gate = threading.Event()
    background.submit(gate.wait)  # the writer thread is busy until the gate opens
    weights = torch.zeros(2, 2)
    background.add_image("tag", viz.attention_image, weights, 0)
    background.send()
    weights += 1  # training updates the weights in place while the frame waits its turn
    gate.set()
    background.close()
    writer.close()
    assert (read_back(tmp_path) == viz.colormap("viridis").numpy()[0]).all()  # zeros, not ones
