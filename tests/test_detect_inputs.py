"""detect()/detect_soft()/detect_molded(): wrong input layouts raise (issue 10.4); the memory
bound, AUTO_TILE and the DETECTION_MAX_INSTANCES warning (issue 10.5)."""

import logging
import warnings

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from mrcnn_nuclei.config import Config, ConfigError
from mrcnn_nuclei.inference import memory as M
from mrcnn_nuclei.inference.tiling import tiled_detect
from mrcnn_nuclei.model import MaskRCNN


class Tiny(Config):
    NAME = "tiny"
    NUM_CLASSES = 2
    BACKBONE = "resnet18"
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_INFERENCE = 32
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    SEED = 3


def _favour_nuclei(m):
    """Random weights mostly pick the background class and may give empty masks; bias the
    classifier towards class 1 and the mask head towards 1 so that every image has nuclei."""
    layer = m.keras_model.get_layer("mrcnn_class_logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 0.0, np.array([0.0, 5.0], np.float32)])
    mask = m.keras_model.get_layer("mrcnn_mask")  # and every mask fills its box
    mask.set_weights([w * 0.0 + (5.0 if w.ndim == 1 else 0.0) for w in mask.get_weights()])
    return m


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _favour_nuclei(MaskRCNN("inference", Tiny(), tmp_path_factory.mktemp("logs")))


@pytest.fixture
def fresh_limit(model):
    """Restore the model's memory settings after a test changes them."""
    saved = (model.config.DETECT_MEMORY_LIMIT_GB, model.config.AUTO_TILE)
    yield model.config
    model.config.DETECT_MEMORY_LIMIT_GB, model.config.AUTO_TILE = saved


def _image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, c), dtype=np.uint8)


# ----------------------------------------------------------------------------- 10.4 inputs
@pytest.mark.parametrize("method", ["detect", "detect_soft"])
@pytest.mark.parametrize("shape", [(70, 90, 3), (70, 90)])
def test_bare_image_raises_and_says_pass_a_list(model, method, shape):
    image = _image(70, 90)[..., 0] if len(shape) == 2 else _image(*shape[:2])
    with pytest.raises(ValueError, match=r"takes a list of images.*\(70, 90(, 3)?\).*pass \[image\]"):
        getattr(model, method)(image)


@pytest.mark.parametrize("method", ["detect", "detect_soft"])
def test_channels_first_image_raises_and_names_moveaxis(model, method):
    chw = np.moveaxis(_image(64, 80), -1, 0)  # (3, 64, 80)
    with pytest.raises(ValueError, match=r"channels-first.*np\.moveaxis\(image, 0, -1\)"):
        getattr(model, method)([chw])
    with pytest.raises(ValueError, match=r"pass \[image\].*channels-first"):
        getattr(model, method)(chw)


def test_batch_array_and_lists_still_work(model):
    batch = np.stack([_image(64, 64, seed=1), _image(64, 64, seed=2)])
    from_batch = model.detect(batch)
    from_list = model.detect(list(batch))
    assert len(from_batch) == 2
    for a, b in zip(from_batch, from_list):
        np.testing.assert_array_equal(a["rois"], b["rois"])
        assert a["masks"].shape[:2] == (64, 64)
    # a channels-last image whose first axis happens to be small is not "channels-first"
    from mrcnn_nuclei.inference.inputs import check_detect_images

    assert check_detect_images([_image(3, 200)], 3)[0].shape == (3, 200, 3)
    assert len(check_detect_images(batch, 3)) == 2


def test_detect_molded_one_array_or_channels_first_raises(model):
    molded, metas, _ = model.mold_inputs([_image(64, 64)])
    with pytest.raises(ValueError, match=r"molded\[np\.newaxis\]"):
        model.detect_molded(molded[0], metas)
    with pytest.raises(ValueError, match="channels-first"):
        model.detect_molded([np.moveaxis(molded[0], -1, 0)], metas)
    assert len(model.detect_molded(np.stack(molded), metas)) == 1


# ----------------------------------------------------------------------------- 10.5 memory
def test_estimate_formula_by_hand():
    c = Tiny()
    parts = M.estimate_detect_memory(c, (128, 192, 3), (120, 190, 3), parts=True)
    inv = sum(1 / s ** 2 for s in c.BACKBONE_STRIDES)
    per_px = (64 / 4 + 64 / 16 + 128 / 64 + 256 / 256 + 512 / 1024   # resnet18 stages
              + 2 * 32 * inv + (512 + 12 * 3) * inv)
    assert parts["features"] == pytest.approx(M.K_FEAT * 4 * 128 * 192 * per_px)
    assert parts["unmold"] == 120 * 190 * 20
    soft = M.estimate_detect_memory(c, (128, 192, 3), (120, 190, 3), soft=True, parts=True)
    assert soft["unmold"] == 5 * 120 * 190 * 20
    assert M.estimate_detect_memory(c, (128, 192), (120, 190)) == pytest.approx(
        sum(parts.values()))


def test_memory_limit_setting_is_validated():
    for bad in (0, -1, "lots", True):
        with pytest.raises(ConfigError, match="DETECT_MEMORY_LIMIT_GB"):
            type("C", (Tiny,), {"DETECT_MEMORY_LIMIT_GB": bad})()
    with pytest.raises(ConfigError, match="AUTO_TILE"):
        type("C", (Tiny,), {"AUTO_TILE": "yes"})()
    assert M.memory_limit_bytes(type("C", (Tiny,), {"DETECT_MEMORY_LIMIT_GB": None})()) is None
    assert M.memory_limit_bytes(type("C", (Tiny,), {"DETECT_MEMORY_LIMIT_GB": 2})()) == 2e9
    assert M.memory_limit_bytes(Tiny()) == pytest.approx(M.physical_memory_bytes() / 2)


def test_over_the_bound_raises_naming_tiled_detect(model, fresh_limit):
    image = _image(256, 256)
    need = M.estimate_detect_memory(fresh_limit, (256, 256, 3), image.shape)
    fresh_limit.DETECT_MEMORY_LIMIT_GB = need / 1e9 * 0.99
    for call in (lambda: model.detect([image]), lambda: model.detect_soft([image])):
        with pytest.raises(M.DetectMemoryError, match=r"tiled_detect.*AUTO_TILE.*"
                                                      r"DETECT_MEMORY_LIMIT_GB"):
            call()
    molded, metas, _ = model.mold_inputs([image])
    with pytest.raises(M.DetectMemoryError, match="tiled_detect"):
        model.detect_molded(molded, metas)
    fresh_limit.DETECT_MEMORY_LIMIT_GB = need / 1e9 * 1.01
    assert model.detect([image])[0]["masks"].shape[:2] == (256, 256)


def test_auto_tile_runs_tiled_detect(model, fresh_limit, caplog):
    image = _image(256, 256, seed=5)
    big = M.estimate_detect_memory(fresh_limit, (256, 256, 3), image.shape)
    small = M.estimate_detect_memory(fresh_limit, (128, 128, 3), (128, 128, 3))
    fresh_limit.DETECT_MEMORY_LIMIT_GB = (big + small) / 2 / 1e9
    fresh_limit.AUTO_TILE = True
    with caplog.at_level(logging.WARNING, logger="mrcnn_nuclei.model"):
        r = model.detect([image])[0]
    assert "running tiled_detect" in caplog.text
    assert r["tile_size"] == 128 and r["overlap"] == 64
    fresh_limit.DETECT_MEMORY_LIMIT_GB = None
    expect, scores = tiled_detect(lambda t: model.detect([t])[0], image, tile_size=128,
                                  overlap=64, return_scores=True)
    np.testing.assert_array_equal(r["labels"], expect)
    n = int(expect.max())
    assert n > 0
    assert r["masks"].shape == (256, 256, n) and len(r["rois"]) == n
    np.testing.assert_allclose(r["scores"], scores)
    for k in range(n):
        ys, xs = np.nonzero(expect == k + 1)
        np.testing.assert_array_equal(r["masks"][..., k], expect == k + 1)
        assert tuple(r["rois"][k]) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_warn_if_full_by_hand():
    c = Tiny()
    det = np.zeros((20, 6), np.float32)
    det[:19, 4] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not M.warn_if_full(c, det, 0, (64, 64))
    det[19, 4] = 1
    with pytest.warns(M.DetectionLimitWarning, match=r"DETECTION_MAX_INSTANCES = 20.*tiled_detect"):
        assert M.warn_if_full(c, det, 0, (64, 64))


def test_detect_warns_when_detections_fill_the_slots(tmp_path):
    class Two(Tiny):
        DETECTION_MAX_INSTANCES = 2

    m = _favour_nuclei(MaskRCNN("inference", Two(), tmp_path))
    with pytest.warns(M.DetectionLimitWarning, match="DETECTION_MAX_INSTANCES = 2"):
        r = m.detect([_image(128, 128, seed=4)])[0]
    assert len(r["scores"]) <= 2
