"""Tests for mrcnn_nuclei.boxes against brute-force references written here."""

import numpy as np
import pytest

from mrcnn_nuclei import boxes as B
from mrcnn_nuclei.config import Config, NucleusConfig


def _iou_loop(a, b):
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, y2 - y1) * max(0.0, x2 - x1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _random_boxes(rng, n, size=100):
    yx = rng.uniform(0, size, (n, 2))
    hw = rng.uniform(1, size / 3, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1)


def test_compute_overlaps_matches_loop():
    rng = np.random.default_rng(0)
    b1, b2 = _random_boxes(rng, 30), _random_boxes(rng, 20)
    got = B.compute_overlaps(b1, b2)
    ref = np.array([[_iou_loop(a, b) for b in b2] for a in b1])
    assert got.shape == (30, 20)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert (ref > 0).sum() > 10  # the random case really has overlaps


def test_compute_iou_hand_case_and_one_vs_many():
    box = np.array([0, 0, 10, 10.0])
    others = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    area = 100.0
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    got = B.compute_iou(box, others, area, areas)
    np.testing.assert_allclose(got, [1.0, 25 / 175, 0.0, 0.5])
    np.testing.assert_allclose(got, B.compute_overlaps(box[None], others)[0])


def test_compute_overlaps_bad_shape_message():
    with pytest.raises(ValueError, match=r"compute_overlaps\(boxes1\).*\[N, 4\]"):
        B.compute_overlaps(np.zeros((3, 3)), np.zeros((2, 4)))


def test_compute_overlaps_masks_matches_loop():
    rng = np.random.default_rng(1)
    m1 = rng.random((20, 24, 5)) > 0.6
    m2 = rng.random((20, 24, 4)) > 0.5
    m2[..., 3] = False  # empty mask
    got = B.compute_overlaps_masks(m1, m2)
    ref = np.zeros((5, 4))
    for i in range(5):
        for j in range(4):
            inter = np.logical_and(m1[..., i], m2[..., j]).sum()
            union = np.logical_or(m1[..., i], m2[..., j]).sum()
            ref[i, j] = inter / union if union else 0
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert B.compute_overlaps_masks(m1, m2[..., :0]).shape == (5, 0)


def test_box_refinement_round_trip_and_hand_case():
    box = np.array([[0, 0, 10, 20.0]])
    gt = np.array([[5, 0, 25, 20.0]])
    d = B.box_refinement(box, gt)
    # centre y 5 -> 15 over height 10; height doubles
    np.testing.assert_allclose(d, [[1.0, 0.0, np.log(2), 0.0]], rtol=1e-6)
    rng = np.random.default_rng(2)
    a, g = _random_boxes(rng, 50), _random_boxes(rng, 50)
    np.testing.assert_allclose(B.apply_box_deltas(a, B.box_refinement(a, g)), g, rtol=1e-5,
                               atol=1e-4)


def test_generate_anchors_order_matches_loop():
    scales, ratios, shape, stride, astride = 16, [0.5, 1, 2], (5, 7), 8, 1
    got = B.generate_anchors(scales, ratios, shape, stride, astride)
    ref = []
    for y in range(shape[0]):
        for x in range(shape[1]):
            for r in ratios:
                h, w = scales / np.sqrt(r), scales * np.sqrt(r)
                cy, cx = y * stride, x * stride
                ref.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    np.testing.assert_allclose(got, np.array(ref))


def test_generate_anchors_anchor_stride_and_multiple_scales():
    got = B.generate_anchors([8, 16], [1, 2], (4, 4), 4, 2)
    assert got.shape == (2 * 2 * 2 * 2, 4)
    centres = (got[:, :2] + got[:, 2:]) / 2
    assert set(np.unique(centres[:, 0])) == {0.0, 8.0}
    # per position: ratio-major then scale: (r=1,s=8), (r=1,s=16), (r=2,s=8), (r=2,s=16)
    hw = got[:4, 2:] - got[:4, :2]
    np.testing.assert_allclose(hw[:, 0] * hw[:, 1], [64, 256, 64, 256])
    np.testing.assert_allclose(hw[2, 1] / hw[2, 0], 2.0)


def test_pyramid_anchors_counts_order_and_stride_grid():
    cfg = NucleusConfig()
    shapes = cfg.backbone_shapes((512, 512))
    anchors = B.generate_pyramid_anchors(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS, shapes,
                                         cfg.BACKBONE_STRIDES, cfg.RPN_ANCHOR_STRIDE)
    per_level = [int(h * w * 3) for h, w in shapes]
    assert per_level == [128 * 128 * 3, 64 * 64 * 3, 32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3]
    assert anchors.shape == (sum(per_level), 4)
    start = 0
    for lvl, n in enumerate(per_level):
        level = anchors[start:start + n]
        start += n
        stride = cfg.BACKBONE_STRIDES[lvl]
        centres = (level[:, :2] + level[:, 2:]) / 2
        np.testing.assert_allclose(centres / stride, np.round(centres / stride), atol=1e-9)
        areas = (level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1])
        np.testing.assert_allclose(areas, cfg.RPN_ANCHOR_SCALES[lvl] ** 2, rtol=1e-9)
        # brute-force order on the first rows: y outer, x, ratio inner
        h, w = shapes[lvl]
        idx = 0
        for y in range(2):
            for x in range(w):
                for r in cfg.RPN_ANCHOR_RATIOS:
                    assert np.allclose(centres[idx], [y * stride, x * stride])
                    hh = level[idx, 2] - level[idx, 0]
                    ww = level[idx, 3] - level[idx, 1]
                    assert np.isclose(ww / hh, r)
                    idx += 1


def test_get_anchors_cached_and_read_only():
    cfg = NucleusConfig()
    a1 = B.get_anchors(cfg, (512, 512, 3))
    a2 = B.get_anchors(NucleusConfig(), (512, 512))
    assert a1 is a2 and a1.dtype == np.float32 and not a1.flags.writeable
    assert len(a1) == 65472
    a3 = B.get_anchors(cfg, (256, 320))
    assert a3 is not a1 and len(a3) == 3 * sum(int(np.ceil(256 / s) * np.ceil(320 / s))
                                               for s in cfg.BACKBONE_STRIDES)
    base = Config()  # different scales -> different anchors for the same shape
    assert not np.array_equal(B.get_anchors(base, (512, 512)), a1)
