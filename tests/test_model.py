"""MaskRCNN facade: build (names reachable), detect() on awkward inputs, detect_soft,
detect_molded, staged training with layer selection, atomic checkpoints, find_last."""

import os
import re

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.model import LAYER_REGEX, MaskRCNN


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    BACKBONE = "resnet18"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_INFERENCE = 64
    POST_NMS_ROIS_TRAINING = 64
    TRAIN_ROIS_PER_IMAGE = 16
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    MAX_GT_INSTANCES = 20
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1
    SEED = 3


class TrainConfig(TinyConfig):
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128


@pytest.fixture(scope="module")
def infer_model(tmp_path_factory):
    return MaskRCNN("inference", TinyConfig(), tmp_path_factory.mktemp("logs"))


def test_layer_names_reachable(infer_model):
    km = infer_model.keras_model
    for name in ("rpn_model", "conv1", "bn_conv1", "res2a_branch2a", "fpn_p2", "fpn_p6",
                 "mrcnn_class_conv1", "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox",
                 "mrcnn_mask_conv1", "mrcnn_mask_deconv", "mrcnn_mask"):
        km.get_layer(name)
    assert km.get_layer("rpn_model").get_layer("rpn_conv_shared").kernel.shape == (3, 3, 64, 512)
    assert [o.shape[-1] for o in km.outputs[:1]] == [6]


def test_detect_awkward_inputs(infer_model):
    rng = np.random.default_rng(0)
    images = [
        (rng.random((70, 90)) * 255).astype(np.uint8),                   # grey
        (rng.random((64, 64, 4)) * 255).astype(np.uint8),                # RGBA
        (rng.random((77, 61, 3)) * 65535).astype(np.uint16),             # 16-bit, odd size
        rng.random((50, 130, 3)).astype(np.float32),                     # float
        (rng.random((70, 90, 3)) * 255).astype(np.uint8),                # same molded shape as #0
    ]
    results = infer_model.detect(images)
    assert len(results) == len(images)
    for img, r in zip(images, results):
        n = len(r["class_ids"])
        assert r["masks"].shape == img.shape[:2] + (n,) and r["masks"].dtype == bool
        assert r["rois"].shape == (n, 4) and r["rois"].dtype == np.int32
        assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
        if n:
            assert (r["rois"][:, 2] <= img.shape[0]).all() and (r["rois"][:, 3] <= img.shape[1]).all()
            assert (r["class_ids"] == 1).all()
            assert (np.diff(r["scores"]) <= 1e-6).all()
    assert sum(len(r["class_ids"]) for r in results) > 0  # confidence 0: something is found
    assert infer_model.detect([]) == []


def test_detect_soft_and_molded_agree(infer_model):
    rng = np.random.default_rng(1)
    img = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    hard = infer_model.detect([img])[0]
    soft = infer_model.detect_soft([img])[0]
    np.testing.assert_array_equal(hard["rois"], soft["rois"])
    sm = soft["soft_masks"]
    assert sm.shape == hard["masks"].shape and sm.dtype == np.float32
    assert sm.min() >= 0 and sm.max() <= 1
    if sm.size:
        agree = ((sm >= 0.5) == hard["masks"]).mean()
        assert agree > 0.99
    molded, metas, _ = infer_model.mold_inputs([img])
    again = infer_model.detect_molded(np.stack(molded), metas)[0]
    np.testing.assert_array_equal(again["rois"], hard["rois"])
    np.testing.assert_array_equal(again["masks"], hard["masks"])


def test_bad_mode_and_find_last_missing(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        MaskRCNN("train", TinyConfig(), tmp_path)
    m = MaskRCNN.__new__(MaskRCNN)
    m.config, m.model_dir = TinyConfig(), str(tmp_path)
    with pytest.raises(FileNotFoundError, match="tiny"):
        m.find_last()


def _synthetic(count, seed):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset()
    ds.load(count, seed=seed, height=128, width=128)
    ds.prepare()
    return ds


def _weights(model, names):
    out = {}
    for n in names:
        layer = model.keras_model.get_layer(n)
        for w in layer.weights:
            out[f"{n}/{w.name}"] = w.numpy().copy()
    return out


@pytest.mark.slow
def test_heads_training_freezes_backbone_and_checkpoints(tmp_path):
    """~100 s on 2 cores: two training stages (each traces the train step once)."""
    cfg = TrainConfig()
    model = MaskRCNN("training", cfg, tmp_path)
    train, val = _synthetic(3, 0), _synthetic(1, 99)
    backbone = ["conv1", "bn_conv1", "res2a_branch2a", "res3a_branch1", "res5b_branch2b"]
    heads = ["fpn_p2", "mrcnn_class_logits", "mrcnn_mask"]
    before_b = _weights(model, backbone)
    before_h = _weights(model, heads)
    rpn_before = model.keras_model.get_layer("rpn_model").weights[0].numpy().copy()
    hist = model.train(train, val, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    assert set(hist.history) >= {"loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
                                 "mrcnn_bbox_loss", "mrcnn_mask_loss", "val_loss"}
    assert np.isfinite(hist.history["loss"]).all()
    after_b = _weights(model, backbone)
    for k, v in before_b.items():
        np.testing.assert_array_equal(after_b[k], v, err_msg=k)   # bit-identical
    after_h = _weights(model, heads)
    assert any(np.abs(after_h[k] - v).max() > 0 for k, v in before_h.items())
    assert np.abs(model.keras_model.get_layer("rpn_model").weights[0].numpy().copy()
                  - rpn_before).max() > 0                          # nested rpn_model trained
    ck1 = os.path.join(model.log_dir, "mask_rcnn_tiny_0001.weights.h5")
    assert os.path.exists(ck1)
    assert os.path.exists(os.path.join(model.log_dir, "config.json"))
    assert re.fullmatch(r"tiny\d{8}T\d{4}", os.path.basename(model.log_dir))
    assert not [f for f in os.listdir(model.log_dir) if f.startswith(".tmp")]
    assert model.find_last() == ck1
    # stage 2: re-compile with a new trainable set; numbering continues (epoch 2)
    res4_before = _weights(model, ["res4a_branch2a"])["res4a_branch2a/kernel"]
    model.train(train, None, learning_rate=0.005, epochs=2, layers="4+", verbose=0)
    assert np.abs(_weights(model, ["res4a_branch2a"])["res4a_branch2a/kernel"]
                  - res4_before).max() > 0
    assert model.find_last().endswith("mask_rcnn_tiny_0002.weights.h5")
    assert np.array_equal(_weights(model, ["conv1"])["conv1/kernel"], before_b["conv1/kernel"])
    # a new model resumes the count from the checkpoint name
    other = MaskRCNN("training", cfg, tmp_path)
    other.set_log_dir(model.find_last())
    assert other.epoch == 2 and other.log_dir == model.log_dir
    assert model.train(train, None, 0.01, epochs=2, layers="heads", verbose=0) is None


def test_layer_regex_presets():
    names = ["conv1", "bn_conv1", "res2a_branch2a", "res3b_branch1", "bn4c_branch2b",
             "res5a_branch2c", "fpn_c5p5", "rpn_conv_shared", "mrcnn_mask", "PREPROC"]

    def sel(key):
        return [n for n in names if re.fullmatch(LAYER_REGEX[key], n)]

    assert sel("heads") == ["fpn_c5p5", "rpn_conv_shared", "mrcnn_mask", "PREPROC"]
    assert sel("3+") == names[3:]
    assert sel("4+") == names[4:]
    assert sel("5+") == names[5:]
    assert sel("all") == names


@pytest.mark.parametrize("arch", ["resnet50", "resnet101"])
def test_inference_graph_stage_shapes(tmp_path, arch):
    """Symbolic shapes and dtypes of every stage of the full inference graph (build only)."""

    class C(TinyConfig):
        BACKBONE = arch
        TOP_DOWN_PYRAMID_SIZE = 256
        FPN_CLASSIF_FC_LAYERS_SIZE = 1024
        POST_NMS_ROIS_INFERENCE = 1000
        DETECTION_MAX_INSTANCES = 100

    km = MaskRCNN("inference", C(), tmp_path).keras_model
    det, cls, bbox, mask, rois, rpn_class, rpn_bbox = km.outputs
    assert tuple(det.shape) == (None, 100, 6)
    assert tuple(cls.shape) == (None, 1000, 2) and tuple(bbox.shape) == (None, 1000, 2, 4)
    assert tuple(mask.shape) == (None, 100, 28, 28, 2)
    assert tuple(rois.shape) == (None, 1000, 4)
    assert tuple(rpn_class.shape) == (None, None, 2) and tuple(rpn_bbox.shape) == (None, None, 4)
    assert all(o.dtype == "float32" for o in km.outputs)
    assert km.get_layer("res5c_branch2c").output.shape[-1] == 2048
    assert km.get_layer("fpn_p2").output.shape[-1] == 256
    n4 = len([l for l in km.layers if l.name.startswith("res4") and l.name.endswith("branch2a")])
    assert n4 == (6 if arch == "resnet50" else 23)
