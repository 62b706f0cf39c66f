"""TTA: transforms, mapping detections back to the original frame, merging the runs."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.color import rgb2hsv

from mrcnn_nuclei.inference.merge import boxes_from_masks
from mrcnn_nuclei.inference.tta import apply_transform, invert_run, tta_detect


class BlobDetector:
    """Deterministic stand-in detector computed from image content (local to this test).

    Instances = 4-connected components of HSV value (max over RGB) > ``threshold``; the soft mask
    is a brightness ramp inside the component; score = mean value / 255.  ``blind_left`` columns
    at the left of ITS input are ignored (so flipped inputs see different things)."""

    def __init__(self, threshold=150, blind_left=0):
        self.threshold, self.blind_left = threshold, blind_left
        self.calls = []

    def detect_soft(self, images, verbose=0):
        self.calls.append(len(images))
        out = []
        for img in images:
            value = np.asarray(img)[..., :3].max(-1).astype(np.float32)
            fg = value > self.threshold
            fg[:, :self.blind_left] = False
            labels, n = ndimage.label(fg)
            masks = labels[..., None] == np.arange(1, n + 1)
            soft = np.where(masks, np.clip(value[..., None] / 255.0, 0.5, 1.0), 0.0)
            scores = np.asarray(ndimage.mean(value, labels, np.arange(1, n + 1)), np.float32) / 255
            out.append({"rois": boxes_from_masks(masks), "class_ids": np.ones(n, np.int32),
                        "scores": scores, "masks": masks, "soft_masks": soft.astype(np.float32)})
        return out


def _asymmetric_image():
    img = np.zeros((60, 90, 3), np.uint8)
    img[..., :] = (40, 20, 60)
    img[5:15, 3:30] = (200, 90, 220)        # wide bar near the top-left
    img[30:55, 70:78] = (230, 100, 180)     # tall bar at the right
    yy, xx = np.mgrid[:60, :90]
    img[(yy - 40) ** 2 + (xx - 25) ** 2 <= 49] = (190, 60, 200)   # disc, bottom-left
    return img


def _canonical(masks):
    """Instance masks as a set of pixel-index tuples (order-free comparison)."""
    return {tuple(np.flatnonzero(masks[..., k])) for k in range(masks.shape[-1])}


def test_flips_are_inverted_masks_and_boxes_align_with_original():
    img = _asymmetric_image()
    det = BlobDetector()
    ref = det.detect_soft([img])[0]
    assert ref["masks"].shape[-1] == 3
    merged, runs = tta_detect(det, img, transforms=("orig", "hflip", "vflip", "hvflip"),
                              merge_kwargs={"min_runs": 4}, return_runs=True)
    assert det.calls == [1, 4]   # one batched call for all transforms
    for run in runs:
        assert _canonical(run["masks"]) == _canonical(ref["masks"])
        assert np.array_equal(run["rois"], boxes_from_masks(run["masks"]))
        assert sorted(map(tuple, run["rois"])) == sorted(map(tuple, ref["rois"]))
    assert merged["masks"].shape[-1] == 3
    assert _canonical(merged["masks"]) == _canonical(ref["masks"])
    assert np.array_equal(merged["rois"], boxes_from_masks(merged["masks"]))
    assert (merged["n_runs"] == 4).all()


def test_unmapped_flip_would_not_align():
    # independent check that the geometry matters: without inverting, the bar moves away
    img = _asymmetric_image()
    det = BlobDetector()
    raw = det.detect_soft([apply_transform("hflip", img)])[0]
    ref = det.detect_soft([img])[0]
    assert _canonical(raw["masks"]) != _canonical(ref["masks"])
    assert _canonical(invert_run("hflip", raw)["masks"]) == _canonical(ref["masks"])


def test_hue_jitter_changes_colour_only():
    img = _asymmetric_image()
    out = apply_transform("hue", img, hue_shift=0.1, saturation_scale=1.2)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert np.abs(out.max(-1).astype(int) - img.max(-1).astype(int)).max() <= 1   # HSV value
    dh = np.mod(rgb2hsv(out)[..., 0] - rgb2hsv(img)[..., 0], 1.0)
    sat = rgb2hsv(img)[..., 1] > 0.3
    assert np.allclose(dh[sat], 0.1, atol=0.02)
    five = np.concatenate([img, np.full(img.shape[:2] + (2,), 77, np.uint8)], -1)
    out5 = apply_transform("hue", five)
    assert (out5[..., 3:] == 77).all()           # extra channels untouched
    grey = np.full((4, 4), 100, np.uint8)
    assert np.array_equal(apply_transform("hue", grey), grey)


def test_instance_seen_by_one_transform_only_is_dropped():
    # the detector is blind to the 35 leftmost columns of its input: the top-left bar is found
    # only in the hflip run (where it sits on the right), so TTA with min_runs=2 drops it
    img = _asymmetric_image()
    det = BlobDetector(blind_left=35)
    merged = tta_detect(det, img, transforms=("orig", "hflip", "vflip"))
    assert merged["masks"].shape[-1] == 1
    assert merged["masks"][30:55, 70:78, 0].all()
    every = tta_detect(det, img, transforms=("orig", "hflip", "vflip"),
                       merge_kwargs={"min_runs": 1})
    assert every["masks"].shape[-1] == 3


def test_default_transforms_and_errors():
    img = _asymmetric_image()
    merged = tta_detect(BlobDetector(), img)
    assert merged["masks"].shape == (60, 90, 3) and (merged["n_runs"] == 4).all()
    assert merged["soft_masks"].dtype == np.float32
    with pytest.raises(ValueError, match="unknown TTA transform"):
        tta_detect(BlobDetector(), img, transforms=("orig", "rot45"))


# --------------------------------------------------------------------------- with the real model
def _tiny_inference_model(tmp_path):
    keras = pytest.importorskip("keras")
    from mrcnn_nuclei.config import Config
    from mrcnn_nuclei.model import MaskRCNN

    attrs = dict(NAME="tta_test", NUM_CLASSES=2, IMAGES_PER_GPU=1, BACKBONE="resnet18",
                 IMAGE_RESIZE_MODE="pad64", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128,
                 TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64,
                 RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), POST_NMS_ROIS_INFERENCE=64,
                 PRE_NMS_LIMIT=500, DETECTION_MAX_INSTANCES=15, DETECTION_MIN_CONFIDENCE=0.0)
    keras.utils.set_random_seed(4)
    return MaskRCNN("inference", type("TTAConfig", (Config,), attrs)(), tmp_path)


def test_real_model_runs_are_mapped_back_to_the_original_frame(tmp_path):
    model = _tiny_inference_model(tmp_path)
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3)).astype(np.uint8)
    img[20:40, 10:50] = 230
    merged, runs = tta_detect(model, img, transforms=("orig", "hflip", "vflip"),
                              merge_kwargs={"min_runs": 1}, return_runs=True)
    direct = {t: model.detect_soft([apply_transform(t, img)])[0] for t in ("orig", "hflip", "vflip")}
    assert len(direct["orig"]["scores"]) > 0   # random weights, confidence 0: detections exist
    for t, run in zip(("orig", "hflip", "vflip"), runs):
        want = direct[t]["soft_masks"]
        want = want[:, ::-1] if t == "hflip" else want[::-1] if t == "vflip" else want
        np.testing.assert_allclose(run["soft_masks"], want, atol=1e-6)
        assert run["masks"].shape[:2] == img.shape[:2]
        # boxes mirrored by hand: a pixel column c maps to W - 1 - c, so [x1, x2) -> [W - x2, W - x1)
        h, w = img.shape[:2]
        y1, x1, y2, x2 = np.asarray(direct[t]["rois"]).T
        if t == "hflip":
            x1, x2 = w - x2, w - x1
        if t == "vflip":
            y1, y2 = h - y2, h - y1
        assert np.array_equal(run["rois"], np.stack([y1, x1, y2, x2], 1))
        # and every mapped mask lies inside its mapped box
        for k, (a, b, c, d) in enumerate(run["rois"]):
            inside = np.zeros(img.shape[:2], bool)
            inside[a:c, b:d] = True
            assert not (run["masks"][..., k] & ~inside).any()
    assert merged["masks"].shape[:2] == img.shape[:2]
    assert len(merged["scores"]) >= 1


# ------------------------------------------------------- benchmarks/tta_eval.py on a tiny model
def test_tta_eval_script_scores_what_evaluate_dataset_scores(tmp_path, dsb_root):
    """The TTA ablation script: its plain row is evaluate_dataset of the model folder; its TTA
    row is evaluate_dataset of a detector written here from tta_detect with the folder's mask
    threshold; the folder's post-processing applies to both; a bad --min-runs is refused."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.evaluation import evaluate_dataset
    from mrcnn_nuclei.modelfolder import PostProcess, load_model, save_model
    from tiny_model import tiny_inference_model

    folder = str(tmp_path / "model")
    model = tiny_inference_model(tmp_path, seed=0, DETECTION_MIN_CONFIDENCE=0.0,
                                 DETECTION_MAX_INSTANCES=30)
    cls = model.keras_model.get_layer("mrcnn_class_logits")   # random weights: give detections
    cls.set_weights([cls.get_weights()[0], np.array([0.0, 2.0], np.float32)])
    settings = PostProcess(mask_threshold=0.45, score_threshold=0.55, min_size=5)
    save_model(model, folder, settings)
    ids = sorted(p.name for p in (Path(dsb_root) / "stage1_train").iterdir())[:2]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tta_eval", repo / "benchmarks" / "tta_eval.py")
    script = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    spec.loader.exec_module(script)
    common = ["--model", folder, "--dataset", str(dsb_root), "--ids", "file",
              "--ids-file", str(tmp_path / "ids.txt"), "--out", str(tmp_path / "out")]
    try:
        rows = script.main(common + ["--transforms", "orig,hflip", "--min-runs", "1"])
        with pytest.raises(SystemExit, match="min-runs 3"):
            script.main(common + ["--transforms", "orig,hflip", "--min-runs", "3"])
    finally:
        sys.path[:] = saved_path

    loaded = load_model(folder)
    assert loaded.postprocess == settings
    ds = DSBDataset().load(str(dsb_root), ids=ids)
    ds.prepare()

    def by_hand(image):
        r = tta_detect(loaded, image, transforms=("orig", "hflip"), merge_kwargs={"min_runs": 1})
        r["masks"] = r["soft_masks"] >= 0.45
        return r

    kw = dict(postprocess=settings, coco_backend="numpy", pannuke=False, verbose=0,
              check_images=False)
    for row, detector in zip(rows, (loaded, by_hand)):
        want = evaluate_dataset(detector, ds, **kw)
        for k in ("dsb", "aji", "pq"):
            assert row[k] == pytest.approx(want["means"][k], abs=1e-12), (row["variant"], k)
        assert row["AP"] == pytest.approx(want["coco"]["AP"], abs=1e-12)
        assert row["n_pred"] == want["totals"]["n_pred"]
    assert rows[0]["n_pred"] > 0 and rows[1]["n_pred"] > 0
    report = json.loads((tmp_path / "out" / "tta.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["no TTA", "TTA orig+hflip, min_runs 1"]
