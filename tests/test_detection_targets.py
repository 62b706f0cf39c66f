"""DetectionTargetLayer against a NumPy reference on hand-made boxes (positives, negatives,
crowds, padding, mini-mask crops), and the no-GT case."""

import numpy as np

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.layers.detection_targets import DetectionTargetLayer, NormBoxes
from test_ops import crop_ref, iou_ref

STD = np.array([0.1, 0.1, 0.2, 0.2])


def refine_ref(b, g):
    h, w = b[2] - b[0], b[3] - b[1]
    gh, gw = g[2] - g[0], g[3] - g[1]
    return np.array([(g[0] + gh / 2 - b[0] - h / 2) / h, (g[1] + gw / 2 - b[1] - w / 2) / w,
                     np.log(gh / h), np.log(gw / w)])


def make_case():
    gt_boxes = np.zeros((2, 4, 4), np.float32)
    gt_ids = np.zeros((2, 4), np.int32)
    gt_boxes[0, :3] = [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.6, 0.3, 0.9]]
    gt_ids[0, :3] = [1, 2, -1]           # third is a crowd
    props = np.zeros((2, 8, 4), np.float32)
    props[0, :6] = [[0.1, 0.1, 0.4, 0.4],        # = gt0 -> positive, class 1
                    [0.52, 0.5, 0.92, 0.88],     # ~ gt1 -> positive, class 2
                    [0.6, 0.0, 0.8, 0.2],        # negative
                    [0.05, 0.65, 0.25, 0.85],    # touches the crowd -> neither
                    [0.45, 0.0, 0.55, 0.1],      # negative
                    [0.12, 0.12, 0.2, 0.2]]      # IoU 0.07 with gt0 -> negative (3rd)
    props[1, :3] = [[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.7], [0.0, 0.0, 1.0, 1.0]]
    rng = np.random.default_rng(0)
    masks = rng.random((2, 10, 10, 4)) > 0.5
    return props, gt_ids, gt_boxes, masks


def test_targets_match_reference():
    props, gt_ids, gt_boxes, masks = make_case()
    # T=6, ratio 0.5: at most 3 positives; 2 positives -> int(2 / 0.5) - 2 = 2 negatives
    layer = DetectionTargetLayer(rois_per_image=6, positive_ratio=0.5, bbox_std_dev=STD,
                                 mask_shape=(6, 6), use_mini_mask=True, seed=1)
    rois, ids, deltas, tmasks = (np.asarray(t) for t in layer(props, gt_ids, gt_boxes, masks))
    assert rois.shape == (2, 6, 4) and ids.shape == (2, 6) and deltas.shape == (2, 6, 4)
    assert tmasks.shape == (2, 6, 6, 6) and ids.dtype == np.int32
    # image 0: slots 0-1 positives (any order), 2-3 negatives drawn from {2, 4, 5}, 4-5 padding
    pidx = [int(np.argmin(np.abs(props[0] - r).sum(1))) for r in rois[0, :4]]
    assert sorted(pidx[:2]) == [0, 1]
    assert set(pidx[2:4]) <= {2, 4, 5} and len(set(pidx[2:4])) == 2
    assert (rois[0, 4:] == 0).all() and (ids[0, 2:] == 0).all()
    assert (deltas[0, 2:] == 0).all() and (tmasks[0, 2:] == 0).all()
    for slot in range(2):
        p = props[0, pidx[slot]]
        np.testing.assert_allclose(rois[0, slot], p, atol=1e-6)
        ious = [iou_ref(p, g) if c > 0 else -1 for g, c in zip(gt_boxes[0], gt_ids[0])]
        g = int(np.argmax(ious))
        assert ids[0, slot] == gt_ids[0, g]
        np.testing.assert_allclose(deltas[0, slot], refine_ref(p, gt_boxes[0, g]) / STD,
                                   atol=1e-4)
        gb = gt_boxes[0, g]
        gh, gw = gb[2] - gb[0], gb[3] - gb[1]
        local = [(p[0] - gb[0]) / gh, (p[1] - gb[1]) / gw, (p[2] - gb[0]) / gh,
                 (p[3] - gb[1]) / gw]
        ref = np.round(crop_ref(masks[0, :, :, g:g + 1].astype(np.float64), local, (6, 6)))[..., 0]
        np.testing.assert_array_equal(tmasks[0, slot], ref)
    # image 1 has no GT: no positives, hence (as Matterport) no negatives either; all zero
    assert (rois[1] == 0).all() and (ids[1] == 0).all() and np.isfinite(deltas).all()


def test_sampling_caps_and_seed():
    rng = np.random.default_rng(3)
    gt = np.zeros((1, 2, 4), np.float32)
    gt[0, 0] = [0.2, 0.2, 0.6, 0.6]
    ids = np.array([[1, 0]], np.int32)
    # 40 near-copies of the GT, just inside it (positives) and 40 far boxes (negatives)
    pos = gt[0, 0] + rng.uniform(0, 0.01, (40, 4)) * np.array([1, 1, -1, -1])
    neg = np.array([0.7, 0.7, 0.9, 0.9]) + rng.uniform(-0.05, 0.05, (40, 4))
    props = np.concatenate([pos, neg])[None].astype(np.float32)
    masks = np.ones((1, 4, 4, 2), bool)
    layer = DetectionTargetLayer(rois_per_image=20, positive_ratio=0.25, bbox_std_dev=STD,
                                 mask_shape=(4, 4), seed=7)
    rois, cls, _, tm = (np.asarray(t) for t in layer(props, ids, gt, masks))
    assert (cls[0, :5] == 1).all() and (cls[0, 5:] == 0).all()      # int(20 * 0.25) = 5
    assert (rois[0, 5:20].sum(1) > 0).all()                          # 20 - 5 = 15 negatives
    assert (rois[0, 5:, 0] > 0.6).all()
    assert (tm[0, :5] == 1).all()                                    # ROI inside a full mask
    layer2 = DetectionTargetLayer.from_config(layer.get_config())
    assert layer2.rois_per_image == 20 and layer2.seed == 7


def test_full_size_masks_and_norm_boxes():
    gt = np.array([[[2, 2, 8, 8]]], np.float32)
    image = np.zeros((1, 11, 11, 3), np.float32)
    n = np.asarray(NormBoxes()(gt, image))
    np.testing.assert_allclose(n, [[[0.2, 0.2, 0.7, 0.7]]], atol=1e-6)
    assert (np.asarray(NormBoxes()(np.zeros((1, 2, 4), np.float32), image)) == 0).all()
    mask = np.zeros((1, 11, 11, 1), bool)
    mask[0, 2:8, 2:8, 0] = True
    layer = DetectionTargetLayer(rois_per_image=4, positive_ratio=0.5, mask_shape=(4, 4),
                                 use_mini_mask=False, seed=0)
    rois, cls, _, tm = (np.asarray(t) for t in layer(n, np.array([[1]], np.int32), n, mask))
    assert cls[0, 0] == 1
    ref = np.round(crop_ref(mask[0].astype(np.float64), n[0, 0], (4, 4)))[..., 0]
    np.testing.assert_array_equal(tm[0, 0], ref)
