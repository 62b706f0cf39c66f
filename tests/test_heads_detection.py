"""Heads (Matterport names and legacy weight shapes) and DetectionLayer against a NumPy
reference (refinement, window clipping, confidence, per-class NMS, top-k, padding)."""

import keras
import numpy as np

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.layers.detection import DetectionLayer, PadDetections, TrimDetections
from mrcnn_nuclei.layers.heads import build_fpn_mask_graph, fpn_classifier_graph
from test_ops import greedy_nms_ref

STD = np.array([0.1, 0.1, 0.2, 0.2])


def test_head_names_and_weight_shapes():
    pooled = keras.Input((None, 7, 7, 256))
    mpooled = keras.Input((None, 14, 14, 256))
    logits, probs, bbox = fpn_classifier_graph(pooled, 81, 1024, 7)
    masks = build_fpn_mask_graph(81)(mpooled)
    model = keras.Model([pooled, mpooled], [logits, probs, bbox, masks])
    want = {"mrcnn_class_conv1": (7, 7, 256, 1024), "mrcnn_class_conv2": (1, 1, 1024, 1024),
            "mrcnn_class_logits": (1024, 81), "mrcnn_bbox_fc": (1024, 324),
            "mrcnn_mask_conv1": (3, 3, 256, 256), "mrcnn_mask_conv4": (3, 3, 256, 256),
            "mrcnn_mask_deconv": (2, 2, 256, 256), "mrcnn_mask": (1, 1, 256, 81)}
    for name, shape in want.items():
        assert tuple(model.get_layer(name).kernel.shape) == shape, name
    for name in ("mrcnn_class_bn1", "mrcnn_class_bn2", "mrcnn_mask_bn1", "mrcnn_mask_bn4"):
        assert [w.name for w in model.get_layer(name).weights] == [
            "gamma", "beta", "moving_mean", "moving_variance"]
    model.get_layer("mrcnn_bbox")
    rng = np.random.default_rng(0)
    out = model.predict_on_batch([rng.normal(size=(2, 3, 7, 7, 256)).astype(np.float32),
                                  rng.normal(size=(2, 5, 14, 14, 256)).astype(np.float32)])
    assert [o.shape for o in out] == [(2, 3, 81), (2, 3, 81), (2, 3, 81, 4), (2, 5, 28, 28, 81)]
    np.testing.assert_allclose(out[1].sum(-1), 1, atol=1e-5)
    assert out[3].min() >= 0 and out[3].max() <= 1


def test_mask_head_width_is_a_parameter():
    mpooled = keras.Input((None, 14, 14, 32))
    model = keras.Model(mpooled, build_fpn_mask_graph(2, norm="gn", gn_groups=8,
                                                      channels=64)(mpooled))
    want = {"mrcnn_mask_conv1": (3, 3, 32, 64), "mrcnn_mask_conv2": (3, 3, 64, 64),
            "mrcnn_mask_deconv": (2, 2, 64, 64), "mrcnn_mask": (1, 1, 64, 2)}
    for name, shape in want.items():
        assert tuple(model.get_layer(name).kernel.shape) == shape, name
    out = model.predict_on_batch(np.zeros((1, 3, 14, 14, 32), np.float32))
    assert out.shape == (1, 3, 28, 28, 2)


def detection_ref(rois, probs, deltas, window, max_inst, min_conf, thr):
    cls = probs.argmax(1)
    sc = probs.max(1)
    d = deltas[np.arange(len(rois)), cls] * STD
    h, w = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    cy, cx = rois[:, 0] + h / 2 + d[:, 0] * h, rois[:, 1] + w / 2 + d[:, 1] * w
    h, w = h * np.exp(d[:, 2]), w * np.exp(d[:, 3])
    b = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
    b[:, [0, 2]] = b[:, [0, 2]].clip(window[0], window[2])
    b[:, [1, 3]] = b[:, [1, 3]].clip(window[1], window[3])
    keep = np.where((cls > 0) & (sc >= min_conf))[0]
    kept = []
    for c in np.unique(cls[keep]):   # per-class NMS, then global top-k by score
        ix = keep[cls[keep] == c]
        kept += [ix[j] for j in greedy_nms_ref(b[ix], sc[ix], max_inst, thr)]
    kept = sorted(kept, key=lambda i: -sc[i])[:max_inst]
    out = np.zeros((max_inst, 6), np.float32)
    for r, i in enumerate(kept):
        out[r] = [*b[i], cls[i], sc[i]]
    return out


def test_detection_layer_matches_reference():
    rng = np.random.default_rng(4)
    bsz, n, k = 2, 50, 3
    c = rng.uniform(0.2, 0.8, (bsz, n, 2))
    s = rng.uniform(0.05, 0.4, (bsz, n, 2))
    rois = np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)
    rois[1, 40:] = 0   # padding rows
    logits = rng.normal(scale=2, size=(bsz, n, k))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    deltas = rng.normal(scale=0.5, size=(bsz, n, k, 4)).astype(np.float32)
    window = np.array([[0.1, 0.0, 0.9, 1.0], [0.0, 0.2, 1.0, 0.8]], np.float32)
    layer = DetectionLayer(max_instances=12, min_confidence=0.4, nms_threshold=0.3,
                           bbox_std_dev=STD)
    got = np.asarray(layer(rois, probs, deltas, window))
    assert got.shape == (bsz, 12, 6)
    for i in range(bsz):
        m = 40 if i == 1 else n
        ref = detection_ref(rois[i, :m], probs[i, :m], deltas[i, :m], window[i], 12, 0.4, 0.3)
        np.testing.assert_allclose(got[i], ref, atol=1e-5)
    assert (got[..., 4] == 0).sum() < got[..., 4].size   # some detections
    # trimming / padding used to run the mask head only on real detections
    trimmed = np.asarray(TrimDetections()(got))
    count = (got[..., 4] > 0).sum(1).max()
    assert trimmed.shape == (bsz, count, 4)
    padded = np.asarray(PadDetections(12)(np.ones((bsz, count, 2, 2, 1), np.float32)))
    assert padded.shape == (bsz, 12, 2, 2, 1) and padded[:, count:].sum() == 0
