"""Model folders (weights + config + post-processing in one folder), the one inference-config
derivation, and PostProcess on hand-made detections."""

import json
import os

import numpy as np
import pytest

from mrcnn_nuclei.config import (ConfigError, NucleusConfig, NucleusInferenceConfig,
                                 inference_config)
from mrcnn_nuclei.modelfolder import (PostProcess, inference_config_for, load_model,
                                      save_model)
from tiny_model import tiny_config, tiny_inference_model


# ------------------------------------------------------------------ the inference config
def test_inference_config_twin_values():
    train = tiny_config()
    train.DETECTION_MIN_CONFIDENCE = 0.3          # set on the instance: kept
    inf = inference_config(train, RPN_NMS_THRESHOLD=0.65)
    assert (inf.GPU_COUNT, inf.IMAGES_PER_GPU, inf.BATCH_SIZE) == (1, 1, 1)
    assert inf.IMAGE_RESIZE_MODE == "pad64"       # a training crop becomes whole padded images
    assert inf.DETECTION_MIN_CONFIDENCE == 0.3 and inf.RPN_NMS_THRESHOLD == 0.65
    assert inf.NAME == "tiny" and inf.BACKBONE == "resnet18" and isinstance(inf, type(train))
    assert train.IMAGE_RESIZE_MODE == "crop" and train.BATCH_SIZE == 1  # not changed
    square = inference_config(type("Sq", (NucleusConfig,), {"IMAGE_RESIZE_MODE": "square",
                                                            "IMAGES_PER_GPU": 4}))
    assert square.IMAGE_RESIZE_MODE == "square" and square.BATCH_SIZE == 1   # other modes kept
    with pytest.raises(ConfigError, match="NOT_AN_OPTION"):
        inference_config(train, NOT_AN_OPTION=1)


def test_every_inference_derivation_keeps_its_old_values(tmp_path):
    """The four places that derived inference configs by hand now call inference_config and
    give the values they gave before (written out here the old way)."""
    from mrcnn_nuclei.commands import evaluate, nucleus
    from mrcnn_nuclei.recipes import DSBScratchConfig, config_with, inference_twin

    # train.py detect on DSB: NucleusInferenceConfig with the command-line overrides
    args = nucleus.build_parser().parse_args(["detect", "--dataset=/data", "--weights=none",
                                              "--image-size", "256", "--backbone", "resnet18"])
    old = type("Old", (NucleusInferenceConfig,), {"BACKBONE": "resnet18", "IMAGE_MIN_DIM": 256,
                                                  "IMAGE_MAX_DIM": 256})()
    assert nucleus.make_config(args, inference=True).to_dict() == old.to_dict()
    # recipes.inference_twin: pad64, no minimum side, at least 64 px
    cfg = config_with(DSBScratchConfig, TOP_DOWN_PYRAMID_SIZE=64)
    old = config_with(DSBScratchConfig, TOP_DOWN_PYRAMID_SIZE=64, IMAGES_PER_GPU=1, GPU_COUNT=1,
                      IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=256)
    assert inference_twin(cfg).to_dict() == old.to_dict()
    # evaluate.py: the JSON beside the weights, one image per batch, crop -> pad64
    weights = tmp_path / "mask_rcnn_tiny_0001.weights.h5"
    weights.write_bytes(b"")
    tiny_config().save_json(tmp_path / "config.json")
    values = dict(NucleusInferenceConfig.read_json(tmp_path / "config.json"))
    values.update(GPU_COUNT=1, IMAGES_PER_GPU=1, IMAGE_RESIZE_MODE="pad64")
    old = NucleusInferenceConfig.from_dict(values)
    assert evaluate.inference_config(str(weights)).to_dict() == old.to_dict()


# ------------------------------------------------------------------ post-processing
def _square(shape, y, x, size):
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return m


def test_postprocess_apply_hand_made():
    shape = (20, 20)
    big = _square(shape, 0, 0, 10)                # 100 px
    over = _square(shape, 5, 5, 10)               # overlaps big on [5:10, 5:10] (25 px)
    tiny = _square(shape, 17, 17, 2)              # 4 px
    r = {"masks": np.stack([big, over, tiny], -1), "scores": np.array([0.6, 0.9, 0.8]),
         "class_ids": np.array([1, 1, 1])}
    masks, scores, ids = PostProcess().apply(r, shape)
    assert masks.shape[-1] == 3 and scores.tolist() == [0.6, 0.9, 0.8]
    assert masks[..., 0].sum() == 75 and masks[..., 1].sum() == 100   # higher score wins
    masks, scores, _ = PostProcess(overlap="area").apply(r, shape)
    assert masks[..., 0].sum() == 100 and masks[..., 1].sum() == 75   # same area: earlier wins
    masks, scores, _ = PostProcess(min_size=5).apply(r, shape)
    assert scores.tolist() == [0.6, 0.9]                                # tiny dropped
    masks, scores, _ = PostProcess(score_threshold=0.7).apply(r, shape)
    assert scores.tolist() == [0.9, 0.8] and masks[..., 0].sum() == 100
    dup = {"masks": np.stack([big, big], -1), "scores": np.array([0.9, 0.5])}
    assert PostProcess().apply(dup, shape)[0].shape[-1] == 1          # emptied mask dropped
    with pytest.raises(ValueError, match="overlap"):
        PostProcess(overlap="iou")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['min_area'\]"):
        PostProcess.from_dict({"min_area": 3})


def test_detect_applies_the_models_settings():
    from mrcnn_nuclei.modelfolder import detect

    shape = (20, 20)
    masks = np.stack([_square(shape, 0, 0, 10), _square(shape, 5, 5, 10),
                      _square(shape, 17, 17, 2)], -1)

    class Loaded:  # stands for load_model(folder): detect() plus .postprocess
        postprocess = PostProcess(min_size=5)

        def detect(self, images):
            return [{"masks": masks, "scores": np.array([0.9, 0.6, 0.8]),
                     "class_ids": np.ones(3, np.int32), "rois": np.zeros((3, 4), np.int32)}
                    for _ in images]

    r = detect(Loaded(), [np.zeros(shape + (3,), np.uint8)])[0]
    assert r["scores"].tolist() == pytest.approx([0.9, 0.6]) and r["masks"].shape[-1] == 2
    assert r["rois"].tolist() == [[0, 0, 10, 10], [5, 5, 15, 15]]
    assert r["masks"][..., 1].sum() == 75                           # overlap to the 0.9 mask
    assert detect(Loaded(), [np.zeros(shape, np.uint8)], PostProcess())[0]["scores"].size == 3


def test_mask_threshold_thresholds_soft_masks():
    soft = np.zeros((6, 6, 1), np.float32)
    soft[1:4, 1:4, 0] = 0.3
    soft[2, 2, 0] = 0.9

    class Soft:
        def detect(self, images):
            return [{"masks": soft >= 0.5, "scores": np.ones(1)}]

        def detect_soft(self, images):
            return [{"masks": soft >= 0.5, "soft_masks": soft, "scores": np.ones(1)}]

    assert PostProcess().detect(Soft(), None)["masks"].sum() == 1
    assert PostProcess(mask_threshold=0.25).detect(Soft(), None)["masks"].sum() == 9


# ------------------------------------------------------------------ save / load
@pytest.mark.slow
def test_save_and_load_a_model_folder(tmp_path):
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset
    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.weights import save_weights

    ds = SyntheticNucleiDataset().load(1, seed=3, height=64, width=64)
    ds.prepare()
    image = ds.load_image(0)
    model = tiny_inference_model(tmp_path / "logs", seed=1)
    want = model.detect([image])[0]
    assert len(want["scores"]) > 0
    settings = PostProcess(score_threshold=0.01, min_size=3, mask_threshold=0.5)
    folder = model.save_folder(tmp_path / "model", postprocess=settings)
    assert sorted(os.listdir(folder)) == ["config.json", "postprocess.json", "weights.weights.h5"]
    assert json.loads((tmp_path / "model" / "postprocess.json").read_text())["min_size"] == 3

    loaded = MaskRCNN.from_folder(folder)           # = load_model(folder)
    assert loaded.mode == "inference" and loaded.postprocess == settings
    assert loaded.config.to_dict() == model.config.to_dict()
    got = loaded.detect([image])[0]
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    # a checkpoint with <stem>.json beside it (load_model of it: tests/test_cli.py save-model)
    ckpt = save_weights(model.keras_model, tmp_path / "run" / "mask_rcnn_tiny_0001.weights.h5",
                        config=model.config)
    assert inference_config_for(ckpt).to_dict() == model.config.to_dict()
    overridden = save_model(model, tmp_path / "m2", {"min_size": 9})
    assert json.loads(open(os.path.join(overridden, "postprocess.json")).read()) == \
        PostProcess(min_size=9).to_dict()
    with pytest.raises(FileNotFoundError, match=r"not a model folder: no weights.weights.h5 .*"
                                                r"mask_rcnn_tiny_0001.weights.h5"):
        load_model(tmp_path / "run")
    os.remove(tmp_path / "run" / "mask_rcnn_tiny_0001.json")
    with pytest.raises(FileNotFoundError, match="no config JSON"):
        load_model(ckpt)
