"""mrcnn_nuclei.evaluation: settings from the model, per-image rows, PanNuke per tissue against
metrics computed independently, image checks, and the recipe's evaluate_model on the same loop."""

import hashlib

import numpy as np
import pytest

from mrcnn_nuclei import metrics as M
from mrcnn_nuclei.datasets import SyntheticNucleiDataset
from mrcnn_nuclei.evaluation import detect_images, evaluate_dataset
from mrcnn_nuclei.modelfolder import PostProcess


def key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class TwoClassNuclei(SyntheticNucleiDataset):
    """Synthetic nuclei with classes 1, 2, 1, 2 ... by instance order (num_classes 3)."""

    def load_mask(self, image_id):
        masks, _ = super().load_mask(image_id)
        return masks, (np.arange(masks.shape[-1]) % 2 + 1).astype(np.int32)


@pytest.fixture(scope="module")
def dataset():
    ds = TwoClassNuclei()
    ds.load(4, seed=21, height=64, width=80, min_nuclei=3, max_nuclei=6)
    ds.add_class("synthetic", 2, "other")
    ds.prepare()
    for i, tissue in zip(ds.image_ids, ["Breast", "Colon", "Breast", "Colon"]):
        ds.image_info[i]["tissue"] = tissue
    return ds


class Oracle:
    """MaskRCNN-like: the ground truth, minus instance 0, with every instance's class flipped
    on odd images; scores descending."""

    def __init__(self, ds, postprocess=None):
        self.table = {key(ds.load_image(i)): (i, ds.load_mask(i)) for i in ds.image_ids}
        if postprocess is not None:
            self.postprocess = postprocess

    def detect(self, images):
        i, (masks, ids) = self.table[key(images[0])]
        masks, ids = masks[..., 1:], ids[1:]
        if i % 2:
            ids = 3 - ids
        n = masks.shape[-1]
        return [{"masks": masks, "class_ids": ids, "scores": np.linspace(0.9, 0.5, n),
                 "rois": np.zeros((n, 4), np.int32)}]


def test_pannuke_per_tissue_and_rows_match_the_metrics(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = evaluate_dataset(Oracle(dataset), dataset, verbose=0)
    assert list(tmp_path.iterdir()) == []              # no out_dir: no files
    gts, preds, tissues = [], [], []
    for i, row in zip(dataset.image_ids, s["per_image"]):
        masks, ids = dataset.load_mask(i)
        pred_ids = ids[1:] if i % 2 == 0 else 3 - ids[1:]
        gt = M.masks_to_label(masks)
        pred = M.masks_to_label(masks[..., 1:])
        gts.append((gt, np.concatenate([[0], ids])[gt]))
        preds.append((pred, np.concatenate([[0], pred_ids])[pred]))
        tissues.append(dataset.image_info[i]["tissue"])
        assert row["tissue"] == tissues[-1] and row["index"] == i
        assert row["dsb"] == pytest.approx(M.dsb_score(gt, pred))
        assert row["bpq"] == pytest.approx(M.panoptic_quality(gt, pred)[0])
    bpq, bpq_t = M.pannuke_bpq([g for g, _ in gts], [p for p, _ in preds], tissues)
    mpq, mpq_t = M.pannuke_mpq(gts, preds, tissues, n_classes=2)
    pan = s["pannuke"]
    assert pan["n_classes"] == 2 and pan["bpq"] == pytest.approx(bpq)
    assert pan["mpq"] == pytest.approx(mpq) and pan["mpq"] < pan["bpq"]  # flipped classes cost
    for t in ("Breast", "Colon"):
        assert pan["per_tissue"][t] == {"bpq": pytest.approx(bpq_t[t]),
                                        "mpq": pytest.approx(mpq_t[t]), "images": 2}


def test_the_models_settings_apply_and_arguments_override_them(dataset):
    ids = list(dataset.image_ids)[:2]
    everything = evaluate_dataset(Oracle(dataset), dataset, ids, verbose=0)
    n = everything["totals"]["n_pred"]
    assert n == everything["totals"]["n_gt"] - 2 > 0
    strict = Oracle(dataset, PostProcess(min_size=10 ** 6))     # as loaded from a model folder
    s = evaluate_dataset(strict, dataset, ids, verbose=0)
    assert s["totals"]["n_pred"] == 0 and s["post_processing"]["min_size"] == 10 ** 6
    s = evaluate_dataset(strict, dataset, ids, min_size=0, verbose=0)
    assert s["totals"]["n_pred"] == n
    s = evaluate_dataset(Oracle(dataset), dataset, ids, score_threshold=0.7, verbose=0)
    kept = sum(int(np.sum(np.linspace(0.9, 0.5, dataset.load_mask(i)[0].shape[-1] - 1) >= 0.7))
               for i in ids)
    assert s["totals"]["n_pred"] == kept < n
    rows = list(detect_images(strict, dataset, ids))
    assert [r["image_id"] for r in rows] == ids and all(r["masks"].shape[-1] == 0 for r in rows)
    assert all(r["result"]["masks"].shape[-1] > 0 for r in rows)   # the raw detections


def test_bad_images_are_reported_before_detection(dataset):
    from mrcnn_nuclei.data.checks import BadImagesError

    class Broken(TwoClassNuclei):
        def check_image(self, image_id, channels=None):
            return ["truncated file"] if image_id == 1 else []

    ds = Broken()
    ds.load(3, seed=21, height=64, width=80, min_nuclei=3, max_nuclei=6)
    ds.prepare()
    calls = []

    def detect(image):
        calls.append(1)
        return {"masks": np.zeros(image.shape[:2] + (0,), bool)}

    with pytest.raises(BadImagesError, match="truncated file"):
        evaluate_dataset(detect, ds, verbose=0)
    assert calls == []
    s = evaluate_dataset(detect, ds, check_images=False, verbose=0)
    assert s["n_images"] == 3


def test_recipe_evaluate_model_is_the_same_loop(dataset):
    from mrcnn_nuclei.recipes import evaluate_model

    out = evaluate_model(Oracle(dataset), dataset, min_size=0)
    s = evaluate_dataset(Oracle(dataset), dataset, coco_backend="numpy", verbose=0)
    assert {k: out[k] for k in ("dsb", "aji", "pq")} == {k: s["means"][k]
                                                        for k in ("dsb", "aji", "pq")}
    assert (out["AP"], out["AP50"]) == (s["coco"]["AP"], s["coco"]["AP50"])
    assert out["n_gt"] == s["totals"]["n_gt"] and out["n_pred"] == out["n_gt"] - 4
