"""Whole-slide run with a real (tiny, random-weight) Mask R-CNN: the Dask path gives exactly the
in-memory tiled inference of the same model, every nucleus once."""

import json

import numpy as np
import pytest

import mrcnn_nuclei  # noqa: F401  (sets KERAS_BACKEND before keras is imported)
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.inference.tiling import tiled_detect


class TinySlideConfig(Config):
    NAME = "tiny_slide"
    NUM_CLASSES = 2
    BACKBONE = "resnet18"
    IMAGES_PER_GPU = 1
    IMAGE_RESIZE_MODE = "pad64"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 256
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    POST_NMS_ROIS_INFERENCE = 64
    DETECTION_MAX_INSTANCES = 24
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    SEED = 5


@pytest.mark.slow
def test_maskrcnn_slide_equals_in_memory_tiling(monuseg_root, tmp_path):
    from PIL import Image
    from distributed import Client, LocalCluster

    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.slides import segment_slide
    from mrcnn_nuclei.slides.segmenters import get_segmenter, make_spec
    from mrcnn_nuclei.weights import save_weights
    from test_slides import read_labels, write_pyramid

    files = sorted((monuseg_root / "Tissue_Images").glob("*.tif"))
    img = np.asarray(Image.open(files[3]))[:448, :448, :3].copy()
    path = tmp_path / "small.tif"
    write_pyramid(path, img, levels=1)
    import keras

    keras.utils.set_random_seed(7)
    model = MaskRCNN("inference", TinySlideConfig(), tmp_path / "logs")
    # random weights are unstable (from one start to the next a head may find nothing): zero
    # the last layers of the heads and set their biases so every proposal becomes a nucleus
    # (class 1) whose mask fills its box; the proposals stay those of the random backbone/RPN
    km = model.keras_model
    for name, bias in (("mrcnn_class_logits", [0.0, 6.0]), ("mrcnn_bbox_fc", 0.0),
                       ("mrcnn_mask", [3.0, 3.0])):
        layer = km.get_layer(name)
        kernel, b = layer.get_weights()
        layer.set_weights([kernel * 0.0, np.zeros_like(b) + np.asarray(bias, np.float32)])
    weights = save_weights(model.keras_model, tmp_path / "tiny.weights.h5", TinySlideConfig())
    del model
    kw = dict(tile=256, overlap=64, min_area=10, tissue=False, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        r = segment_slide(path, tmp_path / "out", weights=weights, client=client, **kw)
    labels = read_labels(r["labels"])
    s = r["summary_data"]
    assert s["tiles_run_now"] == 4 and len(s["segmenter_load_s"]) == 1   # model loaded once
    # the worker's cached model (same process) on the in-memory image, same grid and rule
    seg = get_segmenter(make_spec("maskrcnn", weights))
    ref = tiled_detect(lambda t: seg.model.detect([t])[0], img, tile_size=256, overlap=64,
                       min_area=10)
    assert ref.max() > 5, "the random model found nothing: the test would prove nothing"
    assert np.array_equal(labels, ref)
    with open(r["geojson"]) as f:
        feats = json.load(f)["features"]
    assert len(feats) == labels.max() == len(np.unique(labels)) - 1
    scores = [f["properties"]["measurements"]["score"] for f in feats]
    assert all(0 <= s <= 1 for s in scores)
