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


@pytest.mark.parametrize("reduction", ["batch", "image"])
def test_training_total_is_the_loss_weights_sum(reduction):
    """MaskRCNNTrainingModel.compute_loss: sum of LOSS_WEIGHTS[name] * loss, each loss tracked;
    the mask loss only sees the leading ``mask_slots`` ROI slots (where positives are); the
    model's ``loss_reduction`` reaches every loss (2 images with different counts)."""
    import types

    import keras

    from mrcnn_nuclei.model import MaskRCNNTrainingModel

    rng = np.random.default_rng(0)
    b, a, t, k, m = 2, 6, 4, 2, 4
    meta = np.concatenate([np.zeros((b, 12)), np.ones((b, k))], 1).astype(np.float32)
    x = {"input_image_meta": meta,
         "input_rpn_match": np.array([[[1], [-1], [0], [1], [-1], [0]],
                                      [[1], [0], [0], [0], [0], [-1]]], np.int32),
         "input_rpn_bbox": rng.normal(size=(b, 3, 4)).astype(np.float32)}
    y_pred = {"rpn_class_logits": rng.normal(size=(b, a, 2)).astype(np.float32),
              "rpn_bbox": rng.normal(size=(b, a, 4)).astype(np.float32),
              "target_class_ids": np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.int32),
              "mrcnn_class_logits": rng.normal(size=(b, t, k)).astype(np.float32),
              "target_bbox": rng.normal(size=(b, t, 4)).astype(np.float32),
              "mrcnn_bbox": rng.normal(size=(b, t, k, 4)).astype(np.float32),
              "target_mask": (rng.random((b, t, m, m)) > 0.5).astype(np.float32),
              "mrcnn_mask": rng.uniform(0.1, 0.9, (b, 2, m, m, k)).astype(np.float32)}
    weights = {"rpn_class_loss": 2.0, "rpn_bbox_loss": 0.5, "mrcnn_class_loss": 3.0,
               "mrcnn_bbox_loss": 0.25, "mrcnn_mask_loss": 1.5}
    fake = types.SimpleNamespace(loss_weights_=weights, mask_slots=2, loss_reduction=reduction,
                                 _trackers={n: keras.metrics.Mean(name=n) for n in L.LOSS_NAMES})
    total = f(MaskRCNNTrainingModel.compute_loss(fake, x, None, y_pred))
    r = reduction
    parts = {
        "rpn_class_loss": f(L.rpn_class_loss(x["input_rpn_match"], y_pred["rpn_class_logits"],
                                             r)),
        "rpn_bbox_loss": f(L.rpn_bbox_loss(x["input_rpn_bbox"], x["input_rpn_match"],
                                           y_pred["rpn_bbox"], r)),
        "mrcnn_class_loss": f(L.mrcnn_class_loss(y_pred["target_class_ids"],
                                                 y_pred["mrcnn_class_logits"], meta[:, 12:], r)),
        "mrcnn_bbox_loss": f(L.mrcnn_bbox_loss(y_pred["target_bbox"], y_pred["target_class_ids"],
                                               y_pred["mrcnn_bbox"], r)),
        "mrcnn_mask_loss": f(L.mrcnn_mask_loss(y_pred["target_mask"][:, :2],
                                               y_pred["target_class_ids"][:, :2],
                                               y_pred["mrcnn_mask"], r)),
    }
    other = "image" if r == "batch" else "batch"
    assert f(L.rpn_class_loss(x["input_rpn_match"], y_pred["rpn_class_logits"], other)) != \
        pytest.approx(parts["rpn_class_loss"], rel=1e-3)   # the two reductions differ here
    assert all(v > 0 for v in parts.values()), parts
    assert total == pytest.approx(sum(weights[n] * parts[n] for n in parts), rel=1e-5)
    for name, value in parts.items():
        assert f(fake._trackers[name].result()) == pytest.approx(value, rel=1e-5), name


# ------------------------------------------------------------------ LOSS_REDUCTION
def _two_images():
    """Inputs of all five losses for a batch of 2 images with different counts: image 0 has
    1 non-neutral anchor / positive anchor / positive ROI, image 1 has 3 (random values)."""
    rng = np.random.default_rng(5)
    a, t, k, m = 6, 5, 3, 4
    match = np.zeros((2, a, 1), np.int32)
    match[0, 2] = 1
    match[1, [0, 3, 5]] = [[1], [1], [1]]
    ids = np.zeros((2, t), np.int32)
    ids[0, 0] = 1
    ids[1, :3] = [2, 1, 1]
    # the class loss counts ROIs predicting an active class: only class 0 is active, predicted
    # by 1 ROI of image 0 and 3 of image 1
    logits = rng.normal(size=(2, t, k)).astype(np.float32)
    logits[0, [0], 0] += 9
    logits[0, 1:, 1] += 9
    logits[1, [1, 2, 4], 0] += 9
    logits[1, [0, 3], 2] += 9
    active = np.array([[1, 0, 0], [1, 0, 0]], np.float32)
    return {
        "rpn_class_loss": (match, rng.normal(size=(2, a, 2)).astype(np.float32)),
        "rpn_bbox_loss": (rng.normal(size=(2, 4, 4)).astype(np.float32), match,
                          rng.normal(size=(2, a, 4)).astype(np.float32)),
        "mrcnn_class_loss": (ids, logits, active),
        "mrcnn_bbox_loss": (rng.normal(size=(2, t, 4)).astype(np.float32), ids,
                            rng.normal(size=(2, t, k, 4)).astype(np.float32)),
        "mrcnn_mask_loss": ((rng.random((2, t, m, m)) > 0.5).astype(np.float32), ids,
                            rng.uniform(0.05, 0.95, (2, t, m, m, k)).astype(np.float32)),
    }


def test_rpn_class_loss_batch_and_image_reduction_by_hand():
    """Image 0: one positive anchor (CE c0); image 1: three negatives (CE c1, c2, c3).
    "batch" = (c0 + c1 + c2 + c3) / 4 (Matterport); "image" = (c0 + (c1 + c2 + c3) / 3) / 2."""
    match = np.array([[[1], [0], [0]], [[-1], [-1], [-1]]], np.int32)
    logits = np.array([[[0.0, 1.0], [9, 9], [9, 9]],
                       [[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]]], np.float32)

    def ce(row, label):
        return -(row[label] - math.log(np.exp(row).sum()))

    c0 = ce(logits[0, 0], 1)
    c1, c2, c3 = (ce(logits[1, i], 0) for i in range(3))
    batch = f(L.rpn_class_loss(match, logits, "batch"))
    image = f(L.rpn_class_loss(match, logits, "image"))
    assert batch == pytest.approx((c0 + c1 + c2 + c3) / 4, rel=1e-5)
    assert image == pytest.approx((c0 + (c1 + c2 + c3) / 3) / 2, rel=1e-5)
    assert abs(batch - image) > 0.05
    assert f(L.rpn_class_loss(match, logits)) == batch   # default: Matterport's


@pytest.mark.parametrize("name", L.LOSS_NAMES)
def test_image_reduction_is_the_mean_of_per_image_losses(name):
    """Every loss: "image" = mean over images of the loss of each image alone; "batch" differs
    when the images hold different counts, and equals the count-weighted mean."""
    fn = getattr(L, name)
    args = _two_images()[name]
    alone = [f(fn(*(a[i:i + 1] for a in args))) for i in range(2)]
    assert f(fn(*args, reduction="image")) == pytest.approx(np.mean(alone), rel=1e-5)
    batch = f(fn(*args, reduction="batch"))
    assert batch == pytest.approx((alone[0] * 1 + alone[1] * 3) / 4, rel=1e-5)  # counts 1 and 3
    assert abs(batch - np.mean(alone)) > 1e-3 * max(abs(batch), 1e-3), (batch, alone)
    # split over two "replicas" of one image each: the mean of their "image" values is global
    per_replica = [f(fn(*(a[i:i + 1] for a in args), reduction="image")) for i in range(2)]
    assert np.mean(per_replica) == pytest.approx(f(fn(*args, reduction="image")), rel=1e-5)


def test_image_reduction_counts_an_empty_image_as_zero():
    """An image without positive ROIs adds 0 to the "image" mean (and nothing to "batch")."""
    ids = np.array([[1, 0], [0, 0]], np.int32)
    pred = np.zeros((2, 2, 2, 4), np.float32)
    tgt = np.zeros((2, 2, 4), np.float32)
    tgt[0, 0] = [0.4, 0, 0, 0]
    one = sl1(0.4) / 4
    assert f(L.mrcnn_bbox_loss(tgt, ids, pred, "batch")) == pytest.approx(one, rel=1e-5)
    assert f(L.mrcnn_bbox_loss(tgt, ids, pred, "image")) == pytest.approx(one / 2, rel=1e-5)
    assert f(L.mrcnn_bbox_loss(tgt, np.zeros_like(ids), pred, "image")) == 0.0
    with pytest.raises(ValueError, match="LOSS_REDUCTION"):
        L.mrcnn_bbox_loss(tgt, ids, pred, "mean")


def test_loss_reduction_config_reaches_the_training_model():
    """Config.LOSS_REDUCTION is validated and compile_training_model hands it to the model,
    whose compute_loss then uses it."""
    import keras

    from mrcnn_nuclei.config import Config, ConfigError
    from mrcnn_nuclei.training import MaskRCNNTrainingModel, compile_training_model

    class Image(Config):
        NAME = "r"
        LOSS_REDUCTION = "image"

    class Bad(Config):
        NAME = "r"
        LOSS_REDUCTION = "mean"

    assert Config.LOSS_REDUCTION == "batch"
    with pytest.raises(ConfigError, match="LOSS_REDUCTION"):
        Bad()
    inp = keras.Input((2,))
    model = MaskRCNNTrainingModel(inp, keras.layers.Dense(1)(inp))
    assert model.loss_reduction == "batch"
    compile_training_model(model, Image(), 0.01, 0.9)
    assert model.loss_reduction == "image"
