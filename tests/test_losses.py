"""The five losses on hand-made values; zero (not NaN) when there is nothing to learn."""

import math

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.layers import losses as L


def sl1(d):
    d = abs(d)
    return 0.5 * d * d if d < 1 else d - 0.5


def f(x):
    return float(np.asarray(x))


def test_rpn_class_loss_hand_values():
    match = np.array([[[1], [-1], [0]]], np.int32)
    logits = np.array([[[0.0, 2.0], [1.0, 0.0], [5.0, -5.0]]], np.float32)
    ce_pos = -math.log(math.exp(2) / (1 + math.exp(2)))
    ce_neg = -math.log(math.exp(1) / (1 + math.exp(1)))
    assert f(L.rpn_class_loss(match, logits)) == pytest.approx((ce_pos + ce_neg) / 2, rel=1e-5)
    assert f(L.rpn_class_loss(np.zeros((1, 3, 1), np.int32), logits)) == 0.0


def test_rpn_bbox_loss_uses_positive_anchors_in_order():
    match = np.array([[[0], [1], [-1], [1]], [[0], [0], [0], [0]]], np.int32)
    pred = np.zeros((2, 4, 4), np.float32)
    pred[0, 1] = [0.5, 0, 0, 0]
    pred[0, 3] = [0, 3.0, 0, 0]
    target = np.zeros((2, 3, 4), np.float32)
    target[0, 0] = [0, 0, 0.2, 0]   # row 0 <-> anchor 1, row 1 <-> anchor 3
    target[0, 1] = [0, 1.0, 0, 0]
    want = (sl1(0.5) + sl1(0.2) + sl1(2.0)) / 8.0
    assert f(L.rpn_bbox_loss(target, match, pred)) == pytest.approx(want, rel=1e-5)
    assert f(L.rpn_bbox_loss(target, np.zeros_like(match), pred)) == 0.0


def test_mrcnn_class_loss_active_classes():
    ids = np.array([[1, 0, 2]], np.int32)
    logits = np.array([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]], np.float32)
    active = np.array([[1, 1, 0]], np.float32)   # class 2 inactive: ROI 2 (predicts 2) ignored

    def ce(row, t):
        return -(row[t] - math.log(np.exp(row).sum()))

    want = (ce(logits[0, 0], 1) + ce(logits[0, 1], 0)) / 2
    assert f(L.mrcnn_class_loss(ids, logits, active)) == pytest.approx(want, rel=1e-5)
    assert f(L.mrcnn_class_loss(ids, logits, np.zeros_like(active))) == 0.0


def test_mrcnn_bbox_and_mask_losses():
    ids = np.array([[2, 0]], np.int32)
    pred = np.zeros((1, 2, 3, 4), np.float32)
    pred[0, 0, 2] = [1.5, 0, 0, 0]
    pred[0, 0, 1] = [9, 9, 9, 9]     # other class: ignored
    pred[0, 1] = 7                   # negative ROI: ignored
    tgt = np.zeros((1, 2, 4), np.float32)
    tgt[0, 0] = [0, 0.4, 0, 0]
    assert f(L.mrcnn_bbox_loss(tgt, ids, pred)) == pytest.approx((sl1(1.5) + sl1(0.4)) / 4,
                                                                 rel=1e-5)
    masks = np.full((1, 2, 2, 2, 3), 0.5, np.float32)
    masks[0, 0, :, :, 2] = [[0.9, 0.2], [0.5, 0.5]]
    tm = np.array([[[[1, 0], [1, 0]], [[1, 1], [1, 1]]]], np.float32)
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(0.5)) / 4
    assert f(L.mrcnn_mask_loss(tm, ids, masks)) == pytest.approx(want, rel=1e-5)


def test_no_positives_no_nan():
    z = np.zeros((2, 5), np.int32)
    assert f(L.mrcnn_bbox_loss(np.zeros((2, 5, 4)), z, np.ones((2, 5, 2, 4)))) == 0.0
    assert f(L.mrcnn_mask_loss(np.zeros((2, 5, 4, 4)), z, np.ones((2, 5, 4, 4, 2)))) == 0.0
    # saturated predictions stay finite
    assert np.isfinite(f(L.mrcnn_mask_loss(np.zeros((1, 1, 2, 2)), np.ones((1, 1), np.int32),
                                           np.ones((1, 1, 2, 2, 2)))))
