"""rpn_model (shared head, names, shapes, anchor order), in-graph anchors against
boxes.get_anchors, and ProposalLayer against a NumPy reference."""

import math

import keras
import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.layers.proposals import ProposalLayer
from mrcnn_nuclei.layers.rpn import PyramidAnchors, build_rpn_model, rpn_on_pyramid
from test_ops import greedy_nms_ref


class AnchorConfig(Config):
    NAME = "anchors"
    NUM_CLASSES = 2
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]


@pytest.mark.parametrize("shape,stride", [((256, 256), 1), ((192, 320), 1), ((128, 256), 2)])
def test_in_graph_anchors_equal_get_anchors(shape, stride):
    from mrcnn_nuclei import boxes as B
    from mrcnn_nuclei.data.image_ops import norm_boxes

    cfg = AnchorConfig()
    cfg.RPN_ANCHOR_STRIDE = stride
    layer = PyramidAnchors(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS, cfg.BACKBONE_STRIDES,
                           stride)
    got = np.asarray(layer(np.zeros((1,) + shape + (3,), np.float32)))
    ref = norm_boxes(B.get_anchors(cfg, shape), shape)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # and the NumPy anchors of feature maps of ceil(size / stride) (level, y, x, ratio order)
    fshapes = [[math.ceil(shape[0] / s), math.ceil(shape[1] / s)] for s in cfg.BACKBONE_STRIDES]
    mine = B.generate_pyramid_anchors(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS, fshapes,
                                      cfg.BACKBONE_STRIDES, stride)
    np.testing.assert_allclose(B.get_anchors(cfg, shape), mine, atol=1e-3)


def test_rpn_model_is_shared_and_ordered():
    rpn = build_rpn_model(1, 3, 16)
    assert rpn.name == "rpn_model"
    shapes = {w.path.split("/")[-2] + "/" + w.name: tuple(w.shape) for w in rpn.weights}
    assert shapes == {"rpn_conv_shared/kernel": (3, 3, 16, 512), "rpn_conv_shared/bias": (512,),
                      "rpn_class_raw/kernel": (1, 1, 512, 6), "rpn_class_raw/bias": (6,),
                      "rpn_bbox_pred/kernel": (1, 1, 512, 12), "rpn_bbox_pred/bias": (12,)}
    maps = [keras.Input((s, s, 16)) for s in (8, 4, 2)]
    outs = rpn_on_pyramid(rpn, maps)
    model = keras.Model(maps, outs)
    assert len([l for l in model.layers if l.name == "rpn_model"]) == 1
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, s, s, 16)).astype(np.float32) for s in (8, 4, 2)]
    logits, probs, bbox = model.predict_on_batch(xs)
    assert logits.shape == (2, (64 + 16 + 4) * 3, 2) and bbox.shape == (2, 84 * 3, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # order level, y, x, ratio: anchor index of level 1, (y=1, x=0), ratio 2
    raw = keras.Model(rpn.input, rpn.get_layer("rpn_class_raw").output).predict_on_batch(xs[1])
    a = 64 * 3 + (1 * 4 + 0) * 3 + 2
    np.testing.assert_allclose(logits[:, a], raw[:, 1, 0, 4:6], atol=1e-5)


def proposals_ref(probs, deltas, anchors, pre, post, thr, std):
    out = np.zeros((post, 4), np.float32)
    scores = probs[:, 1]
    ix = np.argsort(-scores, kind="stable")[:pre]
    a = anchors[ix].astype(np.float64)
    d = deltas[ix] * std
    h, w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cy, cx = a[:, 0] + 0.5 * h + d[:, 0] * h, a[:, 1] + 0.5 * w + d[:, 1] * w
    h, w = h * np.exp(d[:, 2]), w * np.exp(d[:, 3])
    b = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1).clip(0, 1)
    keep = greedy_nms_ref(b, scores[ix], post, thr)
    out[:len(keep)] = b[keep]
    return out


def test_proposal_layer_matches_reference():
    rng = np.random.default_rng(5)
    bsz, a_n = 2, 300
    c = rng.uniform(0, 1, (a_n, 2))
    s = rng.uniform(0.05, 0.3, (a_n, 2))
    anchors = np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)
    logits = rng.normal(size=(bsz, a_n, 2))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    deltas = rng.normal(scale=0.5, size=(bsz, a_n, 4)).astype(np.float32)
    std = np.array([0.1, 0.1, 0.2, 0.2])
    layer = ProposalLayer(proposal_count=90, nms_threshold=0.2, pre_nms_limit=100,
                          rpn_bbox_std_dev=std)
    got = np.asarray(layer(probs, deltas, anchors))
    assert got.shape == (bsz, 90, 4)
    for i in range(bsz):
        ref = proposals_ref(probs[i], deltas[i], anchors, 100, 90, 0.2, std)
        np.testing.assert_allclose(got[i], ref, atol=1e-5)
        assert (ref.sum(1) == 0).any()  # the padding path is exercised
    assert ProposalLayer.from_config(layer.get_config()).pre_nms_limit == 100
