"""Mask R-CNN+: 5-channel dataset wrapper, config helper, and the model with a PREPROC layer."""

import numpy as np
import pytest

from mrcnn_nuclei.config import Config, NucleusConfig
from mrcnn_nuclei.data.dataset import Dataset
from mrcnn_nuclei.datasets.plus import (PLUS_MEAN_DISTANCE, PLUS_MEAN_H, PlusConfig, PlusDataset,
                                        plus_channels, plus_config, unet_distance_source)
from mrcnn_nuclei.stain import hematoxylin_channel


class _TwoNuclei(Dataset):
    """Tiny in-test dataset: two touching squares on an H&E-like background."""

    def load(self):
        self.add_class("toy", 1, "nucleus")
        self.add_image("toy", image_id="toy-0", path=None, organ="breast")
        self.add_image("toy", image_id="toy-1", path=None)
        return self

    def load_image(self, image_id):
        img = np.zeros((40, 48, 3), np.uint8)
        img[:] = (235, 170, 210)
        img[10:20, 10:30] = (70, 40, 140)
        return img

    def load_mask(self, image_id):
        m = np.zeros((40, 48, 2), bool)
        m[10:20, 10:20, 0] = True
        m[10:20, 20:30, 1] = True
        return m, np.ones(2, np.int32)


def _toy():
    ds = _TwoNuclei().load()
    ds.prepare()
    return ds


def test_load_image_has_rgb_h_and_gt_distance():
    base = _toy()
    ds = PlusDataset(base)
    img = ds.load_image(0)
    assert img.shape == (40, 48, 5) and img.dtype == np.uint8
    assert np.array_equal(img[..., :3], base.load_image(0))
    assert np.array_equal(img[..., 3], hematoxylin_channel(base.load_image(0)))
    assert img[15, 15, 3] > img[30, 40, 3]           # purple nucleus > pink background
    # distance channel: each 10x10 square peaks at 255 in its own centre, 0 outside
    dist = img[..., 4].astype(int)
    assert dist[:10].max() == 0 and dist[15, 40] == 0
    assert dist[10:20, 10:20].max() == 255 and dist[10:20, 20:30].max() == 255
    # brute force: square of side 10 padded by background, d(y, x) = min distance to outside
    ys, xs = np.mgrid[10:20, 10:20]
    d = np.minimum.reduce([ys - 9, 20 - ys, xs - 9, 20 - xs]).astype(float)
    assert np.array_equal(dist[10:20, 10:20], np.rint(d / d.max() * 255).astype(int))
    # touching squares keep separate peaks: a valley at the shared edge
    assert dist[15, 19] < 60 and dist[15, 20] < 60


def test_wrapper_delegates_dataset_api():
    base = _toy()
    ds = PlusDataset(base)
    assert list(ds.image_ids) == [0, 1] and len(ds) == 2
    assert ds.image_info[0]["organ"] == "breast" and ds.num_classes == 2
    assert ds.class_names == ["BG", "nucleus"]
    m, ids = ds.load_mask(1)
    assert m.shape == (40, 48, 2) and ids.tolist() == [1, 1]
    assert ds.image_reference(0) == ""
    assert ds.channel_count == 5


def test_callable_distance_source_is_used_at_inference():
    seen = []

    def source(rgb):
        seen.append(rgb.shape)
        return np.linspace(0, 1.2, rgb.shape[1])[None, :].repeat(rgb.shape[0], 0)

    img = PlusDataset(_toy(), distance_source=source).load_image(0)
    assert seen == [(40, 48, 3)]
    assert img[0, 0, 4] == 0 and img[0, -1, 4] == 255     # clipped at 1.0
    with pytest.raises(ValueError, match="distance_source"):
        PlusDataset(_toy(), distance_source="unet")
    with pytest.raises(ValueError, match="does not match"):
        plus_channels(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 4)))


def test_unet_distance_source_returns_image_sized_map():
    from mrcnn_nuclei.unet import build_unet

    src = unet_distance_source(build_unet(base_filters=2))
    out = src(np.zeros((37, 50, 3), np.uint8))
    assert out.shape == (37, 50) and out.min() >= 0 and out.max() <= 1


def test_config_helpers():
    Plus = plus_config(NucleusConfig)
    cfg = Plus()
    assert cfg.IMAGE_CHANNEL_COUNT == 5 and cfg.PREPROC_CONV is True
    assert np.allclose(cfg.MEAN_PIXEL, [43.53, 39.56, 48.22, PLUS_MEAN_H, PLUS_MEAN_DISTANCE])
    assert cfg.IMAGE_SHAPE[-1] == 5 and cfg.NAME == "nucleus"
    other = plus_config(Config, h_mean=195, distance_mean=14)()
    assert np.allclose(other.MEAN_PIXEL[3:], [195, 14])

    class Mixed(PlusConfig, NucleusConfig):
        pass

    m = Mixed()
    assert m.IMAGE_CHANNEL_COUNT == 5 and m.PREPROC_CONV
    assert np.allclose(m.MEAN_PIXEL, cfg.MEAN_PIXEL)


# --------------------------------------------------------------------------- with the real model
def _tiny_plus_config(**extra):
    attrs = dict(NAME="plus_test", NUM_CLASSES=2, IMAGES_PER_GPU=1, BACKBONE="resnet50",
                 IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128,
                 TOP_DOWN_PYRAMID_SIZE=64, FPN_CLASSIF_FC_LAYERS_SIZE=128,
                 RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), POST_NMS_ROIS_TRAINING=64,
                 POST_NMS_ROIS_INFERENCE=64, PRE_NMS_LIMIT=500, TRAIN_ROIS_PER_IMAGE=32,
                 RPN_TRAIN_ANCHORS_PER_IMAGE=64, MAX_GT_INSTANCES=40, DETECTION_MAX_INSTANCES=20,
                 DETECTION_MIN_CONFIDENCE=0.0, STEPS_PER_EPOCH=1, VALIDATION_STEPS=1,
                 MEAN_PIXEL=np.array([120.0, 110.0, 100.0]), SEED=0)
    attrs.update(extra)
    base = type("TinyConfig", (Config,), attrs)
    return plus_config(base)()


def _synthetic_plus(count=2):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    base = SyntheticNucleiDataset().load(count, seed=3, height=128, width=128, colour="he")
    base.prepare()
    return PlusDataset(base)


@pytest.mark.slow
def test_plus_model_builds_trains_a_step_and_detects(tmp_path):
    keras = pytest.importorskip("keras")
    from mrcnn_nuclei.model import MaskRCNN

    keras.utils.set_random_seed(0)
    cfg = _tiny_plus_config(BACKBONE="resnet18")
    ds = _synthetic_plus()
    model = MaskRCNN("training", cfg, tmp_path)
    pre = model.keras_model.get_layer("PREPROC")
    assert tuple(pre.kernel.shape) == (1, 1, 5, 3)
    before = pre.kernel.numpy().copy()
    # one epoch of one step (STEPS_PER_EPOCH = 1) through MaskRCNN.train on the 5-channel data
    from mrcnn_nuclei.data.loader import TrainingLoader

    assert TrainingLoader(ds, cfg, shuffle=False, seed=0)[0]["input_image"].shape == \
        (1, 128, 128, 5)
    hist = model.train(ds, None, learning_rate=1e-3, epochs=1, layers="all", verbose=0)
    assert len(hist.history["loss"]) == 1 and np.isfinite(hist.history["loss"][-1])
    assert not np.allclose(pre.kernel.numpy(), before)    # the PREPROC layer learns
    infer = MaskRCNN("inference", cfg, tmp_path)
    image = ds.load_image(0)
    assert image.shape == (128, 128, 5)
    r = infer.detect([image])[0]
    n = len(r["scores"])
    assert r["masks"].shape == (128, 128, n) and r["rois"].shape == (n, 4)
    soft = infer.detect_soft([image])[0]
    assert soft["soft_masks"].shape == (128, 128, n)


def _legacy_arrays_for(keras_model, real):
    """Matterport-layout arrays for every weighted layer of ``keras_model`` except PREPROC,
    with the real COCO first layers where their names match."""
    from mrcnn_nuclei.weights import _layer_weights, _model_layers

    leaves, submodels = _model_layers(keras_model)
    rng = np.random.default_rng(11)
    arrays, names = {}, []
    nested = {sub for subs in submodels.values() for sub in subs}
    for name, layer in leaves.items():
        if not layer.weights or name == "PREPROC" or name in nested:
            continue
        items = []
        for key, var in _layer_weights(layer).items():
            value = real.get((name, key))
            if value is None:
                value = rng.standard_normal(tuple(var.shape)).astype(np.float32) * 0.05
                if key == "moving_variance":
                    value = np.abs(value) + 0.5
            items.append((f"{name}/{key}:0", np.asarray(value, np.float32)))
        arrays[name] = items
        names.append(name)
    for group, subs in submodels.items():
        items = []
        for sub, layer in subs.items():
            for key, var in _layer_weights(layer).items():
                items.append((f"{sub}/{key}:0",
                              rng.standard_normal(tuple(var.shape)).astype(np.float32) * 0.05))
        arrays[group] = items
        names.append(group)
    return names, arrays


@pytest.mark.slow
def test_three_channel_legacy_file_fills_everything_but_preproc(tmp_path, legacy_dir):
    keras = pytest.importorskip("keras")
    from legacy_fixture import real_first_arrays, write_legacy_h5

    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.weights import _layer_weights, _model_layers

    model = MaskRCNN("inference", _tiny_plus_config(), tmp_path)
    real = real_first_arrays(legacy_dir)
    assert real[("conv1", "kernel")].shape == (7, 7, 3, 64)   # a 3-channel (RGB) file
    names, arrays = _legacy_arrays_for(model.keras_model, real)
    path = write_legacy_h5(tmp_path / "legacy_rgb.h5", names, arrays)
    pre_before = model.keras_model.get_layer("PREPROC").kernel.numpy().copy()
    # inference loads refuse a partial file by default: the 3-channel file opts in explicitly
    report = model.load_weights(str(path), by_name=True, allow_partial=True)
    assert report.missing_in_file == ["PREPROC"]
    assert "conv1" in report.loaded and "rpn_conv_shared" in report.loaded
    np.testing.assert_array_equal(model.keras_model.get_layer("PREPROC").kernel.numpy(),
                                  pre_before)
    np.testing.assert_array_equal(model.keras_model.get_layer("conv1").kernel.numpy(),
                                  real[("conv1", "kernel")])
    leaves, submodels = _model_layers(model.keras_model)
    file_values = {}
    for group, items in arrays.items():
        for stored, value in items:
            layer, key = stored[:-2].rsplit("/", 1)
            file_values[(layer, key)] = value
    checked = 0
    for name, layer in leaves.items():
        if name == "PREPROC" or not layer.weights:
            continue
        for key, var in _layer_weights(layer).items():
            np.testing.assert_array_equal(var.numpy(), file_values[(name, key)],
                                          err_msg=f"{name}/{key}")
            checked += 1
    assert checked > 100
    # the 5-channel model still detects after loading
    image = np.zeros((96, 128, 5), np.uint8)
    assert model.detect([image])[0]["masks"].shape[:2] == (96, 128)
    del keras


def test_five_channel_images_go_through_the_default_augmentation():
    from mrcnn_nuclei.data.augment import apply_augmentation, default_augmentation

    ds = PlusDataset(_toy())
    img = ds.load_image(0)
    masks, _ = ds.load_mask(0)
    aug = default_augmentation(channels=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out_img, out_masks = apply_augmentation(img, masks, aug, rng=rng)[:2]
        assert out_img.shape == img.shape and out_img.dtype == np.uint8
        assert out_masks.shape[:2] == img.shape[:2]
