"""mrcnn_nuclei.weights: legacy Matterport .h5, Keras-1 ImageNet layout, native save/load, finding.

The legacy tests build Matterport-layout files with h5py (tests/legacy_fixture.py) from the real layer
names and real first-layer arrays in ../shared/legacy, then load them into

* a stand-in Keras model (built here) with every weighted Matterport layer under its real name, the
  nested ``rpn_model`` and TimeDistributed-wrapped heads (fast; exercises the wrapper path), and
* the real ``MaskRCNN`` (ResNet-101, 2 classes) from mrcnn_nuclei.model.
"""

import os

import h5py
import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND)
import keras
from keras import layers

from mrcnn_nuclei import weights as W
from legacy_fixture import (RPN_SUBLAYERS, coco_layer_names, coco_weight_shapes, make_coco_arrays,
                            real_first_arrays, write_legacy_h5)

NUCLEUS_EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]
HEADS_TD = {"mrcnn_class_conv1", "mrcnn_class_bn1", "mrcnn_class_conv2", "mrcnn_class_bn2",
            "mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask_conv1", "mrcnn_mask_conv2",
            "mrcnn_mask_conv3", "mrcnn_mask_conv4", "mrcnn_mask_bn1", "mrcnn_mask_bn2",
            "mrcnn_mask_bn3", "mrcnn_mask_bn4", "mrcnn_mask_deconv", "mrcnn_mask"}


# ------------------------------------------------------------------------------- stand-in model
def _layer_for(name, spec):
    """A Keras layer + input shape that owns exactly the weights in ``spec``."""
    keys = [k for k, _ in spec]
    if "gamma" in keys:
        c = spec[0][1][0]
        return layers.BatchNormalization(name=name), (c,)
    kshape = spec[0][1]
    if name == "mrcnn_mask_deconv":
        return layers.Conv2DTranspose(kshape[2], kshape[:2], strides=2, name=name), (1, 1, kshape[3])
    if len(kshape) == 2:
        return layers.Dense(kshape[1], name=name), (kshape[0],)
    return layers.Conv2D(kshape[3], kshape[:2], name=name), (kshape[0], kshape[1], kshape[2])


def build_standin(names, num_classes=2, td_heads=True):
    """Multi-input Keras model with one layer per weighted name (rpn_model nested, heads wrapped)."""
    inputs, outputs = [], []
    for name in names:
        spec = coco_weight_shapes(name, num_classes)
        if not spec:
            continue
        if name == "rpn_model":
            fi = keras.Input((None, None, 256))
            shared = layers.Conv2D(512, 3, padding="same", name="rpn_conv_shared")(fi)
            cls = layers.Conv2D(6, 1, name="rpn_class_raw")(shared)
            box = layers.Conv2D(12, 1, name="rpn_bbox_pred")(shared)
            rpn = keras.Model(fi, [cls, box], name="rpn_model")
            x = keras.Input((4, 4, 256))
            inputs.append(x)
            outputs += rpn(x)
            continue
        layer, shape = _layer_for(name, spec)
        if td_heads and name in HEADS_TD:
            x = keras.Input((1,) + shape)
            layer = layers.TimeDistributed(layer, name=name)
        else:
            x = keras.Input(shape)
        inputs.append(x)
        outputs.append(layer(x))
    return keras.Model(inputs, outputs, name="standin")


def _weights_of(model, name):
    """{key: array} of a (possibly nested) layer by name."""
    leaves, _ = W._model_layers(model)
    return {W._weight_key(v): np.array(v.numpy()) for v in leaves[name].weights}


def _snapshot(model):
    leaves, _ = W._model_layers(model)
    return {n: {W._weight_key(v): np.array(v.numpy()) for v in l.weights}
            for n, l in leaves.items() if l.weights}


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def coco_file(tmp_path_factory, legacy_dir):
    """(path, layer_names, arrays) of a ResNet-101 81-class COCO-layout file with real conv1."""
    names = coco_layer_names(legacy_dir)
    arrays = make_coco_arrays(names, seed=7, real=real_first_arrays(legacy_dir))
    path = tmp_path_factory.mktemp("legacy") / "mask_rcnn_coco.h5"
    write_legacy_h5(path, names, arrays)
    return path, names, arrays


def _file_value(arrays, layer, key):
    """Value in the fixture of ``layer``'s weight ``key`` (rpn sub-layers looked up in rpn_model)."""
    if layer in RPN_SUBLAYERS:
        return dict(arrays["rpn_model"])[f"{layer}/{key}:0"]
    return dict(arrays[layer])[f"{layer}/{key}:0"]


def test_fixture_follows_the_documented_layout(coco_file, legacy_dir):
    path, names, _ = coco_file
    assert len(names) == 406
    weighted = [n for n in names if coco_weight_shapes(n)]
    assert len(weighted) == 233  # README: 104 convs, 104 BN, 8 FPN, rpn_model, 16 heads
    with h5py.File(path) as f:
        assert f.attrs["keras_version"] == b"2.0.8"
        assert f.attrs["layer_names"].dtype.kind == "S"
        assert list(f["rpn_model"].attrs["weight_names"][:2]) == [b"rpn_conv_shared/kernel:0",
                                                                   b"rpn_conv_shared/bias:0"]
        assert f["rpn_model/rpn_conv_shared/kernel:0"].shape == (3, 3, 256, 512)
        assert f["mrcnn_class_bn1/mrcnn_class_bn1/gamma:0"].shape == (1024,)
        assert f["mrcnn_class_logits/mrcnn_class_logits/kernel:0"].shape == (1024, 81)
        real = real_first_arrays(legacy_dir)
        np.testing.assert_array_equal(f["conv1/conv1/kernel:0"][()], real[("conv1", "kernel")])


# ------------------------------------------------------------------------------- legacy, stand-in
@pytest.fixture(scope="module")
def standin(coco_file):
    _, names, _ = coco_file
    return build_standin(names, num_classes=2)


def test_legacy_coco_into_two_class_standin_with_nucleus_exclude(coco_file, standin, legacy_dir):
    path, names, arrays = coco_file
    before = _snapshot(standin)
    report = W.load_weights(standin, path, by_name=True, exclude=NUCLEUS_EXCLUDE)
    after = _snapshot(standin)
    excluded = {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    n_checked = 0
    for layer, values in after.items():
        for key, value in values.items():
            if layer in excluded:
                np.testing.assert_array_equal(value, before[layer][key])
            else:
                np.testing.assert_array_equal(value, _file_value(arrays, layer, key))
                n_checked += 1
    assert n_checked == sum(len(coco_weight_shapes(n)) for n in names) - 6
    real = real_first_arrays(legacy_dir)
    np.testing.assert_array_equal(_weights_of(standin, "conv1")["kernel"], real[("conv1", "kernel")])
    np.testing.assert_array_equal(_weights_of(standin, "bn_conv1")["moving_variance"],
                                  real[("bn_conv1", "moving_variance")])
    # the nested sub-model got the rpn weights
    rpn = standin.get_layer("rpn_model").get_layer("rpn_class_raw")
    np.testing.assert_array_equal(rpn.kernel.numpy(), _file_value(arrays, "rpn_class_raw", "kernel"))
    assert sorted(report.excluded) == sorted(excluded)
    assert len(report.loaded) == 233 - 3 - 1 + 3  # rpn_model counts as its three layers
    assert "rpn_bbox_pred" in report.loaded and "mrcnn_class_bn1" in report.loaded
    assert report.missing_in_file == [] and report.skipped == []
    assert ("mrcnn_class_logits", "kernel", (1024, 81), (1024, 2)) in report.mismatched
    text = str(report)
    assert "loaded 232 layers" in text and "mrcnn_bbox_fc" in text


def test_legacy_mismatch_without_exclude_names_layer_shapes_and_fix(coco_file, legacy_dir):
    path, names, _ = coco_file
    model = build_standin(names, num_classes=2)
    before = _weights_of(model, "conv1")["kernel"]
    with pytest.raises(ValueError) as err:
        W.load_weights(model, path, by_name=True)
    msg = str(err.value)
    assert "mrcnn_class_logits" in msg and "(1024, 81)" in msg and "(1024, 2)" in msg
    assert "mrcnn_mask" in msg and "exclude=" in msg and str(path) in msg
    assert f"exclude={NUCLEUS_EXCLUDE!r}" in msg  # says exactly which layers to exclude
    # validated before assigning: nothing was loaded
    np.testing.assert_array_equal(_weights_of(model, "conv1")["kernel"], before)


def test_legacy_strict_load_requires_every_model_layer(tmp_path, coco_file):
    _, names, arrays = coco_file
    small = ["input_image", "conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a"]
    path = write_legacy_h5(tmp_path / "part.h5", small, {n: arrays[n] for n in small})
    model = build_standin(small + ["res2a_branch1", "fpn_p2"])
    with pytest.raises(ValueError, match=r"lacks 2 layers.*res2a_branch1, fpn_p2"):
        W.load_weights(model, path)  # by_name=False
    report = W.load_weights(model, path, by_name=True)
    assert report.missing_in_file == ["res2a_branch1", "fpn_p2"]
    assert report.loaded == ["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a"]
    # the file has a layer the model lacks -> skipped, reported
    model2 = build_standin(["conv1"])
    report2 = W.load_weights(model2, path, by_name=True)
    assert report2.skipped == ["bn_conv1", "res2a_branch2a", "bn2a_branch2a"]
    np.testing.assert_array_equal(_weights_of(model2, "conv1")["bias"],
                                  _file_value(arrays, "conv1", "bias"))


def test_legacy_model_weights_group_and_plain_heads(tmp_path, coco_file):
    """Files that wrap everything in model_weights; heads as plain (not TimeDistributed) layers."""
    _, _, arrays = coco_file
    names = ["conv1", "mrcnn_class_bn1", "mrcnn_mask_deconv", "rpn_model", "anchors"]
    path = write_legacy_h5(tmp_path / "wrapped.h5", names, {n: arrays.get(n, []) for n in names},
                           keras_version="2.1.6", wrap_model_weights=True)
    model = build_standin(names, td_heads=False)
    report = W.load_weights(model, path)
    for layer in ("mrcnn_class_bn1", "mrcnn_mask_deconv", "rpn_conv_shared"):
        for key, value in _weights_of(model, layer).items():
            np.testing.assert_array_equal(value, _file_value(arrays, layer, key))
    assert sorted(report.loaded) == sorted(["conv1", "mrcnn_class_bn1", "mrcnn_mask_deconv",
                                            *RPN_SUBLAYERS])


def test_legacy_rpn_shape_mismatch_is_an_error(tmp_path, coco_file):
    _, _, arrays = coco_file
    model = build_standin(["rpn_model"])
    items = [(w, a[..., :1] if "rpn_class_raw" in w else a) for w, a in arrays["rpn_model"]]
    path = write_legacy_h5(tmp_path / "rpn.h5", ["rpn_model"], {"rpn_model": items})
    with pytest.raises(ValueError, match=r"rpn_class_raw.*kernel.*\(1, 1, 512, 1\).*\(1, 1, 512, 6\)"):
        W.load_weights(model, path, by_name=True)


def test_legacy_uniquified_variable_names(tmp_path, coco_file):
    """TF1 appends _1 to variables of a model built twice in a session (conv1_1/kernel:0)."""
    _, _, arrays = coco_file
    renamed = {
        "conv1": [(w.replace("conv1/", "conv1_1/"), a) for w, a in arrays["conv1"]],
        "rpn_model": [(w.replace("rpn_", "rpn_", 1).replace("/", "_1/", 1), a)
                      for w, a in arrays["rpn_model"]],
    }
    assert renamed["rpn_model"][0][0] == "rpn_conv_shared_1/kernel:0"
    path = write_legacy_h5(tmp_path / "renamed.h5", ["conv1", "rpn_model"], renamed)
    model = build_standin(["conv1", "rpn_model"])
    report = W.load_weights(model, path)
    assert sorted(report.loaded) == sorted(["conv1", *RPN_SUBLAYERS])
    for layer in ("conv1", "rpn_conv_shared", "rpn_bbox_pred"):
        for key, value in _weights_of(model, layer).items():
            np.testing.assert_array_equal(value, _file_value(arrays, layer, key))


# ------------------------------------------------------------------------------- Keras-1 ImageNet
@pytest.mark.parametrize("style", ["keras1", "keras2"])
def test_imagenet_notop_layout_loads_by_layer_and_weight_name(tmp_path, style):
    rng = np.random.default_rng(3)
    names = ["input_1", "conv1", "bn_conv1", "activation_1", "res2a_branch2a", "bn2a_branch2a",
             "res2a_branch1", "avg_pool"]
    arrays, expected = {}, {}
    k1 = {"kernel": "W", "bias": "b", "gamma": "gamma", "beta": "beta",
          "moving_mean": "running_mean", "moving_variance": "running_std"}
    for name in names:
        items = []
        spec = coco_weight_shapes(name)
        for key, shape in spec[::-1]:  # stored in reverse order: matching must not be positional
            value = rng.standard_normal(shape, dtype=np.float32)
            stored = f"{name}_{k1[key]}:0" if style == "keras1" else f"{name}/{key}:0"
            items.append((stored, value))
            expected[(name, key)] = value
        arrays[name] = items
    path = write_legacy_h5(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           names, arrays, keras_version="1.2.2")
    model = build_standin(["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a", "res2a_branch1",
                           "fpn_c2p2", "mrcnn_mask"])
    report = W.load_weights(model, path, by_name=True)
    for (layer, key), value in expected.items():
        np.testing.assert_array_equal(_weights_of(model, layer)[key], value)
    assert report.missing_in_file == ["fpn_c2p2", "mrcnn_mask"]
    assert len(report.loaded) == 5


def test_unknown_weight_name_is_a_clear_error(tmp_path):
    path = write_legacy_h5(tmp_path / "odd.h5", ["conv1"],
                           {"conv1": [("conv1/weights_q:0", np.zeros((7, 7, 3, 64), np.float32))]})
    with pytest.raises(ValueError, match=r"weights_q.*conv1"):
        W.load_weights(build_standin(["conv1"]), path, by_name=True)


# ------------------------------------------------------------------------------- bad files
def test_missing_and_foreign_files(tmp_path):
    model = build_standin(["conv1"])
    missing = tmp_path / "nope" / "mask_rcnn_coco.h5"
    with pytest.raises(FileNotFoundError, match="nope/mask_rcnn_coco.h5") as err:
        W.load_weights(model, missing)
    # ... and says where to obtain the file: its published address and where to put it
    msg = str(err.value)
    assert W.WEIGHT_FILES["coco"]["url"] in msg and W.WEIGHT_FILES["coco"]["sha256"] in msg
    assert str(W._REPO_WEIGHTS_DIR / "mask_rcnn_coco.h5") in msg
    with pytest.raises(FileNotFoundError) as err:
        W.load_weights(model, tmp_path / "run" / "mask_rcnn_x_0007.weights.h5")
    msg = str(err.value)
    assert str(tmp_path / "run" / "mask_rcnn_x_0007.weights.h5") in msg
    assert "find_last" in msg and W.WEIGHT_FILES["coco"]["url"] in msg
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="weights.h5 is not an HDF5"):
        W.load_weights(model, text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="other.h5: unknown weights layout"):
        W.load_weights(model, other)


# ------------------------------------------------------------------------------- native
def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32"))


NATIVE_NAMES = ["conv1", "bn_conv1", "rpn_model", "mrcnn_class_bn1", "mrcnn_class_logits",
                "mrcnn_mask_deconv"]


def test_native_save_is_atomic_with_config_beside_and_round_trips(tmp_path):
    from mrcnn_nuclei.config import NucleusConfig

    model = build_standin(NATIVE_NAMES)
    _randomize(model, 1)
    out = W.save_weights(model, tmp_path / "run" / "mask_rcnn_nucleus_0003.h5",
                         config=NucleusConfig())
    assert out.endswith("mask_rcnn_nucleus_0003.weights.h5")
    assert sorted(os.listdir(tmp_path / "run")) == ["mask_rcnn_nucleus_0003.json",
                                                    "mask_rcnn_nucleus_0003.weights.h5"]
    cfg = W.load_config_beside(out)
    assert cfg.NAME == "nucleus" and cfg.IMAGES_PER_GPU == 6 and cfg.BACKBONE == "resnet50"
    assert W.load_config_beside(tmp_path / "none.weights.h5") is None
    assert W.file_kind(out) == "native"

    fresh = build_standin(NATIVE_NAMES)
    report = W.load_weights(fresh, out)
    assert sorted(report.loaded) == sorted(["conv1", "bn_conv1", *RPN_SUBLAYERS, "mrcnn_class_bn1",
                                            "mrcnn_class_logits", "mrcnn_mask_deconv"])
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_native_by_name_and_exclude(tmp_path):
    model = build_standin(NATIVE_NAMES, num_classes=5)
    _randomize(model, 2)
    path = W.save_weights(model, tmp_path / "five.weights.h5")
    # 2-class model: heads differ -> error naming the layer, unless excluded
    small = build_standin(NATIVE_NAMES[:4] + ["mrcnn_class_logits"], num_classes=2)
    with pytest.raises(ValueError, match=r"mrcnn_class_logits.*\(1024, 5\).*\(1024, 2\)"):
        W.load_weights(small, path, by_name=True)
    before = _snapshot(small)
    report = W.load_weights(small, path, by_name=True, exclude=["mrcnn_class_logits",
                                                                "mrcnn_class_bn1"])
    for layer in ("conv1", "bn_conv1", "rpn_conv_shared", "rpn_bbox_pred"):
        for key, value in _weights_of(small, layer).items():
            np.testing.assert_array_equal(value, _weights_of(model, layer)[key])
    for layer in ("mrcnn_class_logits", "mrcnn_class_bn1"):  # TimeDistributed, excluded
        for key, value in _weights_of(small, layer).items():
            np.testing.assert_array_equal(value, before[layer][key])
    assert sorted(report.excluded) == ["mrcnn_class_bn1", "mrcnn_class_logits"]
    assert report.skipped == ["mrcnn_mask_deconv"]
    assert ("mrcnn_class_logits", "kernel", (1024, 5), (1024, 2)) in report.mismatched


# ------------------------------------------------------------------------------- finding files
@pytest.fixture
def empty_places(tmp_path, monkeypatch):
    repo_dir = tmp_path / "repo_weights"
    repo_dir.mkdir()
    monkeypatch.setattr(W.registry, "_REPO_WEIGHTS_DIR", repo_dir)  # the module that reads it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "env"))
    return tmp_path


def test_find_weights_file_absent_names_places_and_source(empty_places):
    with pytest.raises(FileNotFoundError) as err:
        W.find_weights_file("coco")
    msg = str(err.value)
    for place in (empty_places / "env", empty_places / "repo_weights",
                  empty_places / "home" / ".keras" / "models"):
        assert str(place / "mask_rcnn_coco.h5") in msg
    assert "releases/download/v2.0/mask_rcnn_coco.h5" in msg
    assert W.WEIGHT_FILES["coco"]["sha256"] in msg
    with pytest.raises(FileNotFoundError, match="a268eb855778b3df3c7506639542a6af"):
        W.find_weights_file("imagenet")
    with pytest.raises(ValueError, match="kind='vgg'"):
        W.find_weights_file("vgg")


def test_find_weights_file_search_order(empty_places):
    home = empty_places / "home" / ".keras" / "models"
    home.mkdir(parents=True)
    (home / "mask_rcnn_coco.h5").write_bytes(b"x")
    assert W.find_weights_file("coco") == str(home / "mask_rcnn_coco.h5")
    (empty_places / "repo_weights" / "mask_rcnn_coco.h5").write_bytes(b"x")
    assert W.find_weights_file("coco") == str(empty_places / "repo_weights" / "mask_rcnn_coco.h5")
    env = empty_places / "env"
    env.mkdir()
    (env / "mask_rcnn_coco.h5").write_bytes(b"x")
    assert W.find_weights_file("coco") == str(env / "mask_rcnn_coco.h5")


def test_verify_weights_file_reports_both_digests(tmp_path):
    path = tmp_path / "mask_rcnn_coco.h5"
    path.write_bytes(b"partial download")
    import hashlib
    digest = hashlib.sha256(b"partial download").hexdigest()
    with pytest.raises(ValueError, match=digest):
        W.verify_weights_file(path, "coco")


# ------------------------------------------------------------------------------- real MaskRCNN
def _real_config(**attrs):
    from mrcnn_nuclei.config import Config

    base = dict(NAME="weights_test", NUM_CLASSES=2, IMAGES_PER_GPU=1, IMAGE_MIN_DIM=128,
                IMAGE_MAX_DIM=128, POST_NMS_ROIS_INFERENCE=100, DETECTION_MAX_INSTANCES=20)
    base.update(attrs)
    return type("WeightsTestConfig", (Config,), base)()


def test_legacy_coco_into_real_two_class_maskrcnn(coco_file, legacy_dir, tmp_path):
    """The issue's check: COCO-layout file -> MaskRCNN(ResNet-101, 2 classes), nucleus exclude."""
    from mrcnn_nuclei.model import MaskRCNN

    path, names, arrays = coco_file
    model = MaskRCNN("inference", _real_config(BACKBONE="resnet101"), tmp_path)
    before = _snapshot(model.keras_model)
    with pytest.raises(ValueError, match=r"mrcnn_class_logits.*\(1024, 81\).*\(1024, 2\)") as err:
        model.load_weights(path, by_name=True)
    assert f"exclude={NUCLEUS_EXCLUDE!r}" in str(err.value)  # the class-count fix, by name
    # inference: the excluded heads would stay random -> an error naming them, nothing assigned
    with pytest.raises(W.PartialWeightsError, match="mrcnn_class_logits.*allow_partial=True"):
        model.load_weights(path, by_name=True, exclude=NUCLEUS_EXCLUDE)
    report = model.load_weights(path, by_name=True, exclude=NUCLEUS_EXCLUDE, allow_partial=True)
    after = _snapshot(model.keras_model)
    assert len(after) == 235  # 233 weighted layers, rpn_model as its three convs
    excluded = {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    for layer, values in after.items():
        assert set(values) == {k for k, _ in coco_weight_shapes(layer)} or layer in RPN_SUBLAYERS
        for key, value in values.items():
            expected = before[layer][key] if layer in excluded else _file_value(arrays, layer, key)
            np.testing.assert_array_equal(value, expected, err_msg=f"{layer}/{key}")
    real = real_first_arrays(legacy_dir)
    conv1 = model.keras_model.get_layer("conv1")
    np.testing.assert_array_equal(conv1.kernel.numpy(), real[("conv1", "kernel")])
    assert report.missing_in_file == [] and report.skipped == []
    assert sorted(report.excluded) == sorted(excluded) and len(report.loaded) == 232


def test_save_load_round_trip_gives_identical_detections(tmp_path):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset
    from mrcnn_nuclei.model import MaskRCNN

    cfg = _real_config(BACKBONE="resnet18", NORM="gn", GN_GROUPS=8, TOP_DOWN_PYRAMID_SIZE=64,
                       FPN_CLASSIF_FC_LAYERS_SIZE=128, DETECTION_MIN_CONFIDENCE=0.0)
    ds = SyntheticNucleiDataset().load(1, seed=5, height=128, width=128)
    ds.prepare()
    image = ds.load_image(0)
    keras.utils.set_random_seed(1)
    first = MaskRCNN("inference", cfg, tmp_path)
    want = first.detect([image])[0]
    assert want["masks"].shape[:2] == image.shape[:2] and len(want["scores"]) > 0
    saved = first.save_weights(tmp_path / "run" / "mask_rcnn_weights_test_0001")
    assert os.path.exists(W.config_path_beside(saved))
    keras.utils.set_random_seed(2)
    second = MaskRCNN("inference", cfg, tmp_path)
    other = second.detect([image])[0]
    assert not (len(other["scores"]) == len(want["scores"])
                and np.array_equal(other["scores"], want["scores"]))  # differs before loading
    second.load_weights(saved)
    got = second.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert W.load_config_beside(saved).BACKBONE == "resnet18"


def test_resolve_weights_arg(empty_places, tmp_path):
    assert W.resolve_weights_arg("none") is None and W.resolve_weights_arg("NONE") is None
    with pytest.raises(FileNotFoundError, match="mask_rcnn_coco.h5"):
        W.resolve_weights_arg("coco")
    with pytest.raises(FileNotFoundError, match=r"--weights=.*nope.h5.*coco, imagenet, last, none"):
        W.resolve_weights_arg(str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="needs the model"):
        W.resolve_weights_arg("last")

    class FakeModel:  # only find_last matters here
        def find_last(self):
            return "/runs/x/mask_rcnn_x_0003.weights.h5"

    assert W.resolve_weights_arg("last", FakeModel()) == "/runs/x/mask_rcnn_x_0003.weights.h5"
    (empty_places / "env").mkdir()
    with h5py.File(empty_places / "env" / W.WEIGHT_FILES["imagenet"]["filename"], "w") as f:
        f.attrs["layer_names"] = []
    assert W.resolve_weights_arg("imagenet").endswith("notop.h5")


def test_native_whole_load_into_other_architecture_suggests_by_name(tmp_path):
    model = build_standin(NATIVE_NAMES)
    path = W.save_weights(model, tmp_path / "a.weights.h5")
    other = build_standin(["conv1", "bn_conv1"])
    with pytest.raises(ValueError, match=r"holds 8 layers.*has 2.*by_name=True"):
        W.load_weights(other, path)  # Keras 3 alone would load the two silently
    report = W.load_weights(other, path, by_name=True)
    assert sorted(report.loaded) == ["bn_conv1", "conv1"] and "rpn_conv_shared" in report.skipped


def test_native_whole_load_with_auto_generated_names_uses_structure(tmp_path):
    def unnamed():
        x = keras.Input((3, 3, 2))
        y = layers.BatchNormalization()(layers.Conv2D(4, 3)(x))
        return keras.Model(x, y)

    a, b = unnamed(), unnamed()  # same architecture, different automatic layer names
    assert {l.name for l in a.layers} != {l.name for l in b.layers}
    _randomize(a, 5)
    path = W.save_weights(a, tmp_path / "auto")
    W.load_weights(b, path)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_truncated_file_is_one_clear_error_naming_it(tmp_path):
    """A half-downloaded / half-written file fails in the cheap check (no model needed) with the
    file named, and load_weights says the same instead of a raw h5py traceback."""
    model = build_standin(NATIVE_NAMES)
    path = W.save_weights(model, tmp_path / "a.weights.h5")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.weights\.h5 .*truncated or damaged.*download it "
                                         r"again, or use an earlier checkpoint"):
        W.check_weights_file(cut)
    with pytest.raises(ValueError, match=r"cut\.weights\.h5 .*truncated"):
        W.load_weights(model, cut, by_name=True)
    with pytest.raises(ValueError, match=r"cut\.weights\.h5 .*truncated"):
        W.resolve_weights_arg(str(cut))
    assert W.check_weights_file(path) == "native"
    with pytest.raises(ValueError, match="is a folder"):
        W.check_weights_file(tmp_path)
