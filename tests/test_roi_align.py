"""PyramidROIAlign against a NumPy bilinear reference (level rule + per-box crops)."""

import math

import numpy as np

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.layers.roi_align import PyramidROIAlign, roi_levels
from test_ops import crop_ref  # tests/ is on sys.path under pytest


def level_ref(box, image_hw):
    h, w = box[2] - box[0], box[3] - box[1]
    ref = 224.0 / math.sqrt(image_hw[0] * image_hw[1])
    lvl = 4 + round(math.log2(math.sqrt(h * w) / ref))
    return min(5, max(2, lvl))


def test_levels_and_crops_match_reference():
    rng = np.random.default_rng(3)
    H = W = 256
    b, n, c = 2, 24, 3
    fmaps = [rng.normal(size=(b, H // s, W // s, c)).astype(np.float32) for s in (4, 8, 16, 32)]
    # sizes from 4 px to 250 px so every level gets boxes
    size = np.exp(rng.uniform(np.log(4), np.log(250), (b, n))) / (H - 1)
    cy, cx = rng.uniform(0.1, 0.9, (2, b, n))
    boxes = np.stack([cy - size / 2, cx - size / 2, cy + size / 2, cx + size / 2], -1)
    boxes = boxes.astype(np.float32)
    # the level rule uses the molded image size; at 1024x1024 all four levels occur
    levels = np.asarray(roi_levels(boxes, (1024, 1024)))
    ref_levels = np.array([[level_ref(bx, (1024, 1024)) for bx in row] for row in boxes])
    np.testing.assert_array_equal(levels, ref_levels)
    assert set(ref_levels.ravel()) == {2, 3, 4, 5}
    layer = PyramidROIAlign((7, 7))
    image = np.zeros((b, 1024, 1024, 1), np.float32)
    got = np.asarray(layer(boxes, image, fmaps))
    assert got.shape == (b, n, 7, 7, c)
    for i in range(b):
        for j in range(n):
            ref = crop_ref(fmaps[ref_levels[i, j] - 2][i], boxes[i, j], (7, 7))
            np.testing.assert_allclose(got[i, j], ref, atol=1e-4)


def test_zero_boxes_and_config():
    layer = PyramidROIAlign((14, 14), name="roi_align_mask")
    fmaps = [np.ones((1, 64 // s, 64 // s, 2), np.float32) for s in (4, 8, 16, 32)]
    got = np.asarray(layer(np.zeros((1, 3, 4), np.float32), np.zeros((1, 64, 64, 1)), fmaps))
    assert got.shape == (1, 3, 14, 14, 2) and np.isfinite(got).all()
    again = PyramidROIAlign.from_config(layer.get_config())
    assert again.pool_shape == (14, 14)
