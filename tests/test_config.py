import json
import os
import stat

import numpy as np
import pytest

from mrcnn_nuclei.config import Config, ConfigError, NucleusConfig, NucleusInferenceConfig


class TwoClass(Config):
    NAME = "two"
    NUM_CLASSES = 2


def test_matterport_defaults_and_derived_values():
    c = TwoClass()
    assert c.BACKBONE == "resnet101"
    assert c.BACKBONE_STRIDES == [4, 8, 16, 32, 64]
    assert c.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert c.RPN_TRAIN_ANCHORS_PER_IMAGE == 256
    assert c.PRE_NMS_LIMIT == 6000
    assert c.MASK_SHAPE == [28, 28]
    assert c.BATCH_SIZE == c.IMAGES_PER_GPU * c.GPU_COUNT == 2
    assert list(c.IMAGE_SHAPE) == [1024, 1024, 3]
    assert c.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 2
    assert c.BACKBONE_SHAPES.tolist() == [[256, 256], [128, 128], [64, 64], [32, 32], [16, 16]]


def test_nucleus_presets_match_matterport_sample():
    c = NucleusConfig()
    assert (c.NAME, c.NUM_CLASSES, c.BACKBONE) == ("nucleus", 2, "resnet50")
    assert (c.IMAGE_RESIZE_MODE, c.IMAGE_MIN_DIM, c.IMAGE_MIN_SCALE) == ("crop", 512, 2.0)
    assert list(c.IMAGE_SHAPE) == [512, 512, 3]
    assert c.RPN_ANCHOR_SCALES == (8, 16, 32, 64, 128)
    assert c.RPN_TRAIN_ANCHORS_PER_IMAGE == 64
    assert c.MINI_MASK_SHAPE == (56, 56)
    np.testing.assert_allclose(c.MEAN_PIXEL, [43.53, 39.56, 48.22])
    assert c.DETECTION_MAX_INSTANCES == 400
    assert c.BATCH_SIZE == 6
    i = NucleusInferenceConfig()
    assert (i.IMAGE_RESIZE_MODE, i.BATCH_SIZE, i.RPN_NMS_THRESHOLD) == ("pad64", 1, 0.7)


@pytest.mark.parametrize("attrs, attr_named", [
    ({"IMAGE_MAX_DIM": 1000}, "IMAGE_MAX_DIM"),
    ({"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": 500}, "IMAGE_MIN_DIM"),
    ({"IMAGE_CHANNEL_COUNT": 5}, "MEAN_PIXEL"),
    ({"IMAGE_RESIZE_MODE": "stretch"}, "IMAGE_RESIZE_MODE"),
    ({"RPN_ANCHOR_SCALES": (8, 16, 32)}, "RPN_ANCHOR_SCALES"),
    ({"MASK_SHAPE": [56, 56]}, "MASK_SHAPE"),
    ({"MASK_HEAD_CHANNELS": 0}, "MASK_HEAD_CHANNELS"),
    ({"NORM": "gn", "GN_GROUPS": 16, "MASK_HEAD_CHANNELS": 72}, "MASK_HEAD_CHANNELS"),
    ({"NUM_CLASSES": 0}, "NUM_CLASSES"),
    ({"BACKBONE": "vgg16"}, "BACKBONE"),
    ({"NORM": "ln"}, "NORM"),
    ({"LOSS_WEIGHTS": {"rpn_class_loss": 1.0, "mask": 2.0}}, "LOSS_WEIGHTS"),
    ({"DETECTION_NMS_THRESHOLD": 0.0}, "DETECTION_NMS_THRESHOLD"),
])
def test_impossible_settings_are_rejected_with_the_attribute_named(attrs, attr_named):
    bad = type("Bad", (TwoClass,), attrs)
    with pytest.raises(ConfigError) as err:
        bad()
    assert attr_named in str(err.value)


def test_five_channel_config_with_five_means_is_valid():
    plus = type("Plus", (NucleusConfig,), {"IMAGE_CHANNEL_COUNT": 5, "PREPROC_CONV": True,
                                           "MEAN_PIXEL": [43.5, 39.6, 48.2, 30.0, 20.0]})()
    assert list(plus.IMAGE_SHAPE) == [512, 512, 5]


def test_json_round_trip(tmp_path):
    c = NucleusConfig()
    path = c.save_json(tmp_path / "cfg" / "config.json")
    data = json.loads(open(path).read())
    assert data["class"] == "NucleusConfig"
    assert data["values"]["RPN_ANCHOR_SCALES"] == [8, 16, 32, 64, 128]
    back = NucleusConfig.load_json(path)
    assert back.to_dict() == c.to_dict()
    assert isinstance(back.MEAN_PIXEL, np.ndarray)
    assert back.RPN_ANCHOR_SCALES == (8, 16, 32, 64, 128)
    # the generic base class can read it too
    assert Config.load_json(path).IMAGE_MIN_SCALE == 2.0


def test_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Config.load_json(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="NOT_AN_ATTRIBUTE"):
        Config.from_dict({"NOT_AN_ATTRIBUTE": 1})


def test_display_prints_every_attribute(capsys):
    NucleusConfig().display()
    out = capsys.readouterr().out
    for name in ("BACKBONE", "MEAN_PIXEL", "IMAGE_SHAPE", "RPN_ANCHOR_SCALES", "LOSS_WEIGHTS"):
        assert name in out


# ------------------------------------------------------------------ JSON: NumPy, callables, files
def test_save_json_numpy_values_umask_and_no_tmp(tmp_path):
    class NumpyValues(TwoClass):
        USE_MINI_MASK = np.bool_(True)
        DETECTION_MIN_CONFIDENCE = np.float32(0.5)
        IMAGE_MIN_DIM = np.int64(64)
        IMAGE_MAX_DIM = np.int64(128)
        RPN_ANCHOR_RATIOS = np.array([0.5, 1.0, 2.0])

    old = os.umask(0o022)
    try:
        path = NumpyValues().save_json(tmp_path / "config.json")
    finally:
        os.umask(old)
    values = json.loads(open(path).read())["values"]
    assert values["USE_MINI_MASK"] is True and values["DETECTION_MIN_CONFIDENCE"] == 0.5
    assert values["IMAGE_MIN_DIM"] == 64 and values["RPN_ANCHOR_RATIOS"] == [0.5, 1.0, 2.0]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644      # the user's umask, not 0600
    assert TwoClass.load_json(path).USE_MINI_MASK is True

    class Unwritable(TwoClass):
        LOSS_WEIGHTS = {"rpn_class_loss": object()}

    with pytest.raises(ConfigError, match="LOSS_WEIGHTS"):
        Unwritable().save_json(tmp_path / "bad" / "config.json")
    assert not (tmp_path / "bad").exists() or os.listdir(tmp_path / "bad") == []


def my_backbone(input_image, stage5=True, train_bn=None):  # stands for a user's backbone
    raise NotImplementedError


def test_callable_backbone_saves_and_loads_with_a_clear_message(tmp_path):
    class Custom(TwoClass):
        BACKBONE = staticmethod(my_backbone)
        COMPUTE_BACKBONE_SHAPE = staticmethod(lambda shape: [[1, 1]] * 5)

    path = Custom().save_json(tmp_path / "config.json")
    data = json.loads(open(path).read())
    assert data["values"]["BACKBONE"] == "my_backbone"
    assert data["callables"]["BACKBONE"] == f"{__name__}.my_backbone"
    assert Custom.load_json(path).BACKBONE is my_backbone     # the class's own function kept
    with pytest.raises(ConfigError, match=r"BACKBONE = .*my_backbone.* are functions.*"
                                          r"Config subclass that defines it"):
        NucleusInferenceConfig.load_json(path)
