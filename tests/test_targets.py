"""RPN targets against a brute-force reference with explicit loops over anchors and GT boxes."""

import time

import numpy as np
import pytest

from mrcnn_nuclei.boxes import get_anchors
from mrcnn_nuclei.config import Config, NucleusConfig
from mrcnn_nuclei.data import targets as T


class SmallConfig(Config):
    NAME = "small"
    NUM_CLASSES = 2
    IMAGE_RESIZE_MODE = "crop"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64


def _iou(a, b):
    y1, x1 = max(a[0], b[0]), max(a[1], b[1])
    y2, x2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, y2 - y1) * max(0.0, x2 - x1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_match(anchors, class_ids, boxes):
    """Matterport's rules with plain loops (argmax per GT column, lowest index on ties)."""
    anchors = [list(map(float, a)) for a in anchors]
    n = len(anchors)
    crowd = [b for c, b in zip(class_ids, boxes) if c < 0]
    real = [(k, b) for k, (c, b) in enumerate(zip(class_ids, boxes)) if c > 0]
    match = [0] * n
    best_gt = [-1] * n
    best_iou = [0.0] * n
    col_best = [(-1.0, -1)] * len(real)
    for i, a in enumerate(anchors):
        crowd_max = max([_iou(a, b) for b in crowd], default=0.0)
        for j, (k, b) in enumerate(real):
            v = _iou(a, b)
            if v > best_iou[i]:
                best_iou[i], best_gt[i] = v, k
            if v > col_best[j][0]:
                col_best[j] = (v, i)
        if best_iou[i] < 0.3 and crowd_max < 0.001:
            match[i] = -1
    for v, i in col_best:
        if v > 0:
            match[i] = 1
    for i in range(n):
        if best_iou[i] >= 0.7:
            match[i] = 1
    return np.array(match), np.array(best_gt)


def _random_gt(rng, n, size=64, crowd=0):
    yx = rng.uniform(0, size - 6, (n, 2))
    hw = rng.uniform(4, 20, (n, 2))
    boxes = np.round(np.concatenate([yx, np.minimum(yx + hw, size)], axis=1))
    ids = np.ones(n, np.int32)
    ids[:crowd] = -1
    return ids, boxes


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("seed,n_gt,crowd", [(0, 12, 0), (1, 25, 3), (2, 1, 0), (3, 40, 5)])
def test_match_equals_brute_force(seed, n_gt, crowd, grid):
    cfg = SmallConfig()
    anchors = get_anchors(cfg, (64, 64))
    rng = np.random.default_rng(seed)
    ids, boxes = _random_gt(rng, n_gt, crowd=crowd)
    if seed == 3:  # fractional boxes, some hanging over the border
        boxes = boxes + rng.uniform(-3, 3, boxes.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    shape = (64, 64) if grid else None
    match, anchor_gt = T.match_anchors(anchors, ids, boxes, cfg, shape)
    ref_match, ref_gt = reference_match(anchors, ids, boxes)
    np.testing.assert_array_equal(match, ref_match)
    pos = match == 1
    np.testing.assert_array_equal(anchor_gt[pos], ref_gt[pos])
    assert pos.sum() >= n_gt - crowd and (match == -1).sum() > 0
    # unsampled deltas: one row per positive, anchor order, std-normalised refinement
    m2, bbox = T.build_rpn_targets(anchors, ids, boxes, cfg, sample=False, image_shape=shape)
    np.testing.assert_array_equal(m2, ref_match)
    rows = []
    for i in np.flatnonzero(ref_match == 1):
        a, g = anchors[i].astype(float), boxes[ref_gt[i]]
        ah, aw = a[2] - a[0], a[3] - a[1]
        gh, gw = g[2] - g[0], g[3] - g[1]
        d = [((g[0] + gh / 2) - (a[0] + ah / 2)) / ah, ((g[1] + gw / 2) - (a[1] + aw / 2)) / aw,
             np.log(gh / ah), np.log(gw / aw)]
        rows.append(np.array(d) / cfg.RPN_BBOX_STD_DEV)
    np.testing.assert_allclose(bbox, np.array(rows), rtol=1e-4, atol=1e-5)


def test_crowd_neighbours_never_negative():
    cfg = SmallConfig()
    anchors = get_anchors(cfg, (64, 64))
    ids = np.array([1, -1])
    boxes = np.array([[5, 5, 15, 15], [30, 30, 60, 60]], float)
    match, _ = T.match_anchors(anchors, ids, boxes)
    touching = np.array([_iou(a, boxes[1]) >= 0.001 for a in anchors])
    assert touching.sum() > 10
    assert not np.any(match[touching] == -1)


def test_sampling_counts_and_deltas():
    cfg = SmallConfig()
    anchors = get_anchors(cfg, (64, 64))
    rng = np.random.default_rng(5)
    ids, boxes = _random_gt(rng, 60)
    full, full_bbox = T.build_rpn_targets(anchors, ids, boxes, cfg, sample=False)
    assert (full == 1).sum() > cfg.RPN_TRAIN_ANCHORS_PER_IMAGE // 2  # the cap really applies
    match, bbox = T.build_rpn_targets(anchors, ids, boxes, cfg, rng=np.random.default_rng(1))
    assert match.dtype == np.int32 and bbox.shape == (64, 4) and bbox.dtype == np.float32
    n_pos = (match == 1).sum()
    assert n_pos == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert n_pos + (match == -1).sum() == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    # sampled sets are subsets of the unsampled ones
    assert np.all(full[match == 1] == 1) and np.all(full[match == -1] == -1)
    # deltas of the kept positives, in anchor order, equal the unsampled rows for those anchors
    full_pos = np.flatnonzero(full == 1)
    kept_rows = np.searchsorted(full_pos, np.flatnonzero(match == 1))
    np.testing.assert_allclose(bbox[:n_pos], full_bbox[kept_rows], rtol=1e-6)
    assert np.all(bbox[n_pos:] == 0)
    # seeded
    again, bbox2 = T.build_rpn_targets(anchors, ids, boxes, cfg, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(match, again)


def test_few_positives_fill_with_negatives_and_no_gt():
    cfg = SmallConfig()
    anchors = get_anchors(cfg, (64, 64))
    match, bbox = T.build_rpn_targets(anchors, np.array([1]), np.array([[10, 10, 20, 22]]), cfg,
                                      rng=np.random.default_rng(0))
    assert 1 <= (match == 1).sum() < 32
    assert (match != 0).sum() == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    match, bbox = T.build_rpn_targets(anchors, np.zeros(0, np.int32), np.zeros((0, 4)), cfg,
                                      rng=np.random.default_rng(0))
    assert (match == 1).sum() == 0 and (match == -1).sum() == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert not bbox.any()
    full, _ = T.build_rpn_targets(anchors, np.zeros(0), np.zeros((0, 4)), cfg, sample=False)
    assert np.all(full == -1)


@pytest.mark.parametrize("shape", [(64, 64), (96, 64)])
def test_overlap_pairs_both_methods_equal_dense(shape):
    rng = np.random.default_rng(9)
    cfg = SmallConfig()
    anchors = get_anchors(cfg, shape)
    ids, boxes = _random_gt(rng, 30)
    boxes[:3] = [[0, 0, 64, 64], [0.5, 0.5, 1.5, 1.5], [-4, 60, 10, 70]]  # large, tiny, outside
    from mrcnn_nuclei.boxes import compute_overlaps
    dense = compute_overlaps(anchors, boxes)
    ref = set(map(tuple, np.argwhere(dense > 0)))
    for a, b, iou in (T.overlap_pairs(anchors, boxes),
                      T.grid_overlap_pairs(anchors, boxes, cfg, shape)):
        assert np.all(np.diff(a) >= 0)
        assert set(zip(a.tolist(), b.tolist())) == ref
        np.testing.assert_allclose(iou, dense[a, b], rtol=1e-12)


def test_anchor_stride_two_grid_pairs():
    class Strided(SmallConfig):
        RPN_ANCHOR_STRIDE = 2
    cfg = Strided()
    anchors = get_anchors(cfg, (64, 64))
    ids, boxes = _random_gt(np.random.default_rng(4), 20)
    a, b, _ = T.grid_overlap_pairs(anchors, boxes, cfg, (64, 64))
    a2, b2, _ = T.overlap_pairs(anchors, boxes)
    assert set(zip(a.tolist(), b.tolist())) == set(zip(a2.tolist(), b2.tolist()))


def test_mismatched_lengths_message():
    with pytest.raises(ValueError, match="gt_class_ids has 2 entries but gt_boxes has 1"):
        T.match_anchors(np.zeros((3, 4)), [1, 1], [[0, 0, 1, 1]])


def test_fast_on_nucleus_sized_problem():
    cfg = NucleusConfig()
    anchors = get_anchors(cfg, (512, 512))
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 490, (200, 2))
    boxes = np.round(np.concatenate([yx, yx + rng.uniform(6, 40, (200, 2))], axis=1))
    ids = np.ones(200, np.int32)
    T.build_rpn_targets(anchors, ids, boxes, cfg, rng=rng, image_shape=(512, 512))
    t0 = time.perf_counter()
    for _ in range(3):
        match, _ = T.build_rpn_targets(anchors, ids, boxes, cfg, rng=rng, image_shape=(512, 512))
    dt = (time.perf_counter() - t0) / 3
    assert (match == 1).sum() == 32
    assert dt < 0.25, f"build_rpn_targets took {dt:.3f}s (about 0.02 s expected)"
    # same labels as the generic sweep before sampling
    full_grid, _ = T.build_rpn_targets(anchors, ids, boxes, cfg, sample=False, image_shape=(512, 512))
    full_sweep, _ = T.build_rpn_targets(anchors, ids, boxes, cfg, sample=False)
    np.testing.assert_array_equal(full_grid, full_sweep)
