"""check_dataset (issue 10.8): every bad image and mask reported at once before training, or
skipped with a logged count; the datasets' cheap check_image hooks."""

import logging

import numpy as np
import pytest
from PIL import Image

import mrcnn_nuclei  # noqa: F401
from mrcnn_nuclei.config import Config
from mrcnn_nuclei.data.checks import (BadImagesError, check_dataset, find_bad_images,
                                      png_header)
from mrcnn_nuclei.data.dataset import Dataset
from mrcnn_nuclei.datasets import DSBDataset, LabelImageDataset, SyntheticNucleiDataset


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _dsb_folder(root, names):
    """DSB layout with one good image per name; returns {name: (image path, [mask paths])}."""
    rng = np.random.default_rng(0)
    out = {}
    for name in names:
        folder = root / "stage1_train" / name
        image = _png(folder / "images" / f"{name}.png",
                     rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        masks = []
        for k in range(2):
            m = np.zeros((40, 50), np.uint8)
            m[5 + 10 * k:12 + 10 * k, 5:15] = 255
            masks.append(_png(folder / "masks" / f"m{k}.png", m))
        out[name] = (image, masks)
    return out


@pytest.fixture
def bad_dsb(tmp_path):
    files = _dsb_folder(tmp_path, ["good", "cut_image", "small_mask", "cut_mask"])
    _truncate(files["cut_image"][0])
    _png(files["small_mask"][1][1], np.zeros((30, 50), np.uint8))
    _truncate(files["cut_mask"][1][0], keep=0.9)
    ds = DSBDataset().load(tmp_path)  # load() reads headers only: all four register
    ds.prepare()
    return ds, files


def test_all_bad_files_reported_at_once(bad_dsb):
    ds, files = bad_dsb
    assert len(ds.image_ids) == 4
    with pytest.raises(BadImagesError) as info:
        check_dataset(ds, Config())
    text = str(info.value)
    assert "3 of 4 images are bad" in text and "--skip-bad-images" in text
    assert f"{files['cut_image'][0]}" in text and "image truncated" in text
    assert f"mask size differs from image: {files['small_mask'][1][1]} is 30x50" in text
    assert f"mask truncated: {files['cut_mask'][1][0]}" in text
    assert "good.png" not in text
    names = sorted(ds.image_info[i]["id"] for i, _, _ in info.value.bad)
    assert names == ["cut_image", "cut_mask", "small_mask"]


def test_skip_bad_returns_a_view_and_logs_the_count(bad_dsb, caplog):
    ds, _ = bad_dsb
    with caplog.at_level(logging.WARNING, logger="mrcnn_nuclei.data.checks"):
        view = check_dataset(ds, Config(), skip_bad=True)
    assert "skipping 3 bad image(s) of 4" in caplog.text
    assert [view.image_info[i]["id"] for i in view.image_ids] == ["good"]
    assert len(ds.image_ids) == 4  # the caller's dataset is unchanged
    masks, ids = view.load_mask(view.image_ids[0])
    assert masks.shape == (40, 50, 2) and list(ids) == [1, 1]
    cfg = type("C", (Config,), {"SKIP_BAD_IMAGES": True})()
    assert list(check_dataset(ds, cfg).image_ids) == list(view.image_ids)


def test_training_stops_before_the_first_step(bad_dsb, tmp_path):
    from mrcnn_nuclei.model import MaskRCNN

    class C(Config):
        NAME = "chk"
        NUM_CLASSES = 2
        BACKBONE = "resnet18"
        IMAGES_PER_GPU = 1
        IMAGE_RESIZE_MODE = "square"
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 32
        TRAIN_ROIS_PER_IMAGE = 8
        POST_NMS_ROIS_TRAINING = 16
        MAX_GT_INSTANCES = 4
        STEPS_PER_EPOCH = 1
        VALIDATION_STEPS = 1

    ds, files = bad_dsb
    model = MaskRCNN("training", C(), tmp_path / "logs")
    with pytest.raises(BadImagesError, match=r"training dataset: 3 of 4") as info:
        model.train(ds, None, learning_rate=0.001, epochs=1, layers="heads", verbose=0)
    assert str(files["cut_image"][0]) in str(info.value)
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.h5"))


def test_default_hook_catches_channels_and_mask_size():
    class Mine(Dataset):  # a Matterport-style subclass: load_image/load_mask only
        def load_image(self, image_id):
            return np.zeros((20, 30, 3), np.uint8)

        def load_mask(self, image_id):
            size = (20, 30) if image_id == 0 else (20, 31)
            return np.zeros(size + (1,), bool), np.ones(1, np.int32)

    ds = Mine()
    for i in range(2):
        ds.add_image("x", i, path=None)
    ds.prepare()
    bad = find_bad_images(ds, type("C4", (Config,), {"IMAGE_CHANNEL_COUNT": 4,
                                                     "MEAN_PIXEL": [0, 0, 0, 0]})())
    assert [i for i, _, _ in bad] == [0, 1]
    assert all("wrong channel count: load_image gives 3 channel(s)" in p[0] for _, _, p in bad)
    assert "mask size differs from image" in bad[1][2][1]
    assert find_bad_images(ds, Config(), image_ids=[0]) == []


def test_label_image_and_synthetic_hooks(tmp_path):
    _png(tmp_path / "im" / "a.png", np.zeros((20, 20, 3), np.uint8))
    _png(tmp_path / "lab" / "a.png", np.ones((20, 20), np.uint8))
    _png(tmp_path / "im" / "b.png", np.zeros((20, 20, 3), np.uint8))
    _png(tmp_path / "lab" / "b.png", np.ones((20, 20), np.uint8))
    ds = LabelImageDataset().load(tmp_path / "im", tmp_path / "lab")
    ds.prepare()
    _truncate(tmp_path / "lab" / "b.png", keep=0.5)
    bad = find_bad_images(ds, Config())
    assert [ds.image_info[i]["id"] for i, _, _ in bad] == ["b"]
    assert bad[0][2][0].startswith("labels ")
    syn = SyntheticNucleiDataset().load(2, channels=1)
    syn.prepare()
    assert find_bad_images(syn, type("G", (Config,), {"IMAGE_CHANNEL_COUNT": 1,
                                                      "MEAN_PIXEL": [0.0]})()) == []
    assert "channels=3" in find_bad_images(syn, Config())[0][2][0]


def test_png_header_matches_pillow(tmp_path):
    p = _png(tmp_path / "x.png", np.zeros((17, 23), np.uint8))
    assert png_header(p) == (17, 23, True)
    _truncate(p, keep=0.8)
    assert png_header(p) == (17, 23, False)
    (tmp_path / "y.png").write_bytes(b"not a png at all, really not")
    with pytest.raises(ValueError, match="not a PNG"):
        png_header(tmp_path / "y.png")


def test_real_dsb_images_pass(dsb_root):
    ds = DSBDataset().load(dsb_root)
    ds.prepare()
    assert find_bad_images(ds, Config(), image_ids=ds.image_ids[:40]) == []


def test_skip_bad_images_flag_reaches_training_and_evaluation(bad_dsb):
    """--skip-bad-images (train/detect and evaluate commands) sets Config.SKIP_BAD_IMAGES, and the
    one evaluation loop then scores only the good image instead of stopping."""
    from mrcnn_nuclei.commands import evaluate as ev
    from mrcnn_nuclei.commands import nucleus
    from mrcnn_nuclei.evaluation import evaluate_dataset

    parser = nucleus.build_parser()
    base = ["train", "--dataset=synthetic", "--weights=none"]
    assert nucleus.make_config(parser.parse_args(base + ["--skip-bad-images"]), False) \
        .SKIP_BAD_IMAGES is True
    assert nucleus.make_config(parser.parse_args(base), False).SKIP_BAD_IMAGES is False
    import argparse
    eva = ev.add_arguments(argparse.ArgumentParser())
    common = ["--dataset=x", "--weights=none", "--out=o"]
    assert eva.parse_args(common + ["--skip-bad-images"]).skip_bad_images is True
    assert eva.parse_args(common).skip_bad_images is False

    ds, files = bad_dsb

    class Detector:
        def __init__(self, skip):
            self.config = type("C", (Config,), {"NAME": "t", "SKIP_BAD_IMAGES": skip})()

        def __call__(self, image):
            h, w = image.shape[:2]
            return {"masks": np.zeros((h, w, 0), bool), "scores": np.zeros(0, np.float32),
                    "class_ids": np.zeros(0, np.int32), "rois": np.zeros((0, 4), np.int32)}

    with pytest.raises(BadImagesError) as info:
        evaluate_dataset(Detector(False), ds, verbose=0)
    assert str(files["cut_image"][0].name) in str(info.value)
    summary = evaluate_dataset(Detector(True), ds, verbose=0, pannuke=False)
    assert summary["n_images"] == 1
