"""mrcnn_nuclei.evaluation.evaluate_dataset and the evaluate command (mrcnn_nuclei.commands.evaluate,
samples/nucleus/evaluate.py): the loop with fake detectors of known scores, the files, the CLI."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mrcnn_nuclei import metrics as M

SCRIPT = Path(__file__).resolve().parents[1] / "samples" / "nucleus" / "evaluate.py"


@pytest.fixture(scope="module")
def ev():
    from mrcnn_nuclei.commands import evaluate

    return evaluate


@pytest.fixture(scope="module")
def dataset():
    from mrcnn_nuclei.datasets import SyntheticNucleiDataset

    ds = SyntheticNucleiDataset()
    ds.load(3, seed=11, height=96, width=112, min_nuclei=4, max_nuclei=9)
    ds.prepare()
    return ds


def key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def minus_one_detector(ds):
    """Returns the ground truth with its largest nucleus removed, scores descending."""
    table = {}
    for i in ds.image_ids:
        masks, _ = ds.load_mask(i)
        drop = int(np.argmax(masks.sum(axis=(0, 1))))
        kept = np.delete(masks, drop, axis=-1)
        table[key(ds.load_image(i))] = (kept, masks)
    calls = []

    def detect(image):
        kept, _ = table[key(image)]
        calls.append(1)
        n = kept.shape[-1]
        return {"rois": np.zeros((n, 4), np.int32), "class_ids": np.ones(n, np.int32),
                "scores": np.linspace(0.99, 0.5, n).astype(np.float32), "masks": kept}

    return detect, table, calls


def cocoeval_ap(dataset, ids, results):
    """AP@[.5:.95] of COCO results JSON dicts (image k + 1 = ids[k]) by pycocotools' COCOeval."""
    from pycocotools import mask as mu
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from mrcnn_nuclei.postprocess import masks_to_label

    images, anns = [], []
    for k, i in enumerate(ids):
        gt = masks_to_label(dataset.load_mask(i)[0])
        images.append({"id": k + 1, "height": gt.shape[0], "width": gt.shape[1]})
        for v in np.unique(gt)[1:]:
            rle = mu.encode(np.asfortranarray((gt == v).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1,
                         "segmentation": rle, "area": float(mu.area(rle)),
                         "bbox": list(mu.toBbox(rle)), "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
    coco.createIndex()
    e = COCOeval(coco, coco.loadRes(results), "segm")  # maxDets 100 >= nuclei per image here
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e.stats[0]


def test_evaluate_dataset_known_scores_and_files(ev, dataset, tmp_path):
    detect, table, calls = minus_one_detector(dataset)
    ids = list(dataset.image_ids)
    out = tmp_path / "eval"
    summary = ev.evaluate_dataset(detect, dataset, ids, str(out), overlays=True, verbose=0)
    assert len(calls) == len(ids)
    # expected per-image values from the ground truth alone
    exp_dsb, exp_f1, exp_aji, n_total, tp_total = [], [], [], 0, 0
    for i in ids:
        masks, _ = dataset.load_mask(i)
        n = masks.shape[-1]
        areas = masks.sum(axis=(0, 1))
        exp_dsb.append((n - 1) / n)
        exp_f1.append(2 * (n - 1) / (2 * n - 1))
        exp_aji.append((areas.sum() - areas.max()) / areas.sum())
        n_total += n
        tp_total += n - 1
    means = summary["means"]
    assert means["dsb"] == pytest.approx(np.mean(exp_dsb))
    assert means["f1"] == pytest.approx(np.mean(exp_f1))
    assert means["pq"] == pytest.approx(np.mean(exp_f1))    # sq = 1 for exact masks
    assert means["aji"] == pytest.approx(np.mean(exp_aji))
    assert means["precision"] == 1.0 and means["sq"] == pytest.approx(1.0)
    assert summary["totals"] == {"n_gt": n_total, "n_pred": tp_total, "tp": tp_total, "fp": 0,
                                 "fn": len(ids)}
    r_max = tp_total / n_total   # all detections correct: precision 1 up to this recall
    exp_ap = np.sum(np.linspace(0, 1, 101) <= r_max) / 101
    assert summary["coco"]["AP"] == pytest.approx(exp_ap)
    assert summary["coco"]["AP50"] == pytest.approx(exp_ap)

    # files
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(ids)
    assert [float(r["dsb"]) for r in rows] == pytest.approx(exp_dsb, abs=1e-6)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["means"]["dsb"] == pytest.approx(np.mean(exp_dsb))
    assert saved["n_images"] == len(ids)
    coco = json.loads((out / "predictions_coco.json").read_text())
    assert len(coco) == tp_total and {d["image_id"] for d in coco} == {1, 2, 3}
    # the COCO JSON, scored by COCOeval itself against the ground truth, gives the summary's AP
    assert cocoeval_ap(dataset, ids, coco) == pytest.approx(summary["coco"]["AP"], abs=1e-12)
    # PanNuke bPQ/mPQ: per-image PQ (= F1 here, exact masks) averaged over the one tissue "all"
    pan = summary["pannuke"]
    assert pan["bpq"] == pytest.approx(np.mean(exp_f1))
    assert pan["mpq"] == pytest.approx(np.mean(exp_f1))   # one class: mPQ = bPQ
    assert pan["per_tissue"] == {"all": {"bpq": pytest.approx(np.mean(exp_f1)),
                                         "mpq": pytest.approx(np.mean(exp_f1)),
                                         "images": len(ids)}}
    assert saved["pannuke"]["bpq"] == pytest.approx(pan["bpq"])
    for i, row in zip(ids, rows):
        name = row["image_id"]
        lab = tifffile.imread(out / "labels" / f"{name}.tif")
        kept, _ = table[key(dataset.load_image(i))]
        assert M.dsb_score(kept, lab) == 1.0          # the label TIFF holds the prediction
        png = np.array(Image.open(out / "overlays" / f"{name}.png"))
        assert png.shape == dataset.load_image(i).shape[:2] + (3,)
        assert np.all(png == (255, 255, 0), axis=-1).any()   # the missed nucleus is outlined


def test_model_like_object_and_post_processing(ev, dataset, tmp_path):
    detect, table, _ = minus_one_detector(dataset)

    class FakeModel:  # anything with MaskRCNN's detect(images, verbose) signature
        def detect(self, images, verbose=0):
            r = detect(images[0])
            masks = np.concatenate([r["masks"], r["masks"][..., :1]], axis=-1)  # + a duplicate
            n = masks.shape[-1]
            return [{"rois": np.zeros((n, 4), np.int32), "class_ids": np.ones(n, np.int32),
                     "scores": np.linspace(0.9, 0.1, n), "masks": masks}]

    s = ev.evaluate_dataset(FakeModel(), dataset, [0], str(tmp_path / "m"), verbose=0)
    # the duplicate (lowest score) loses every pixel to the original and is dropped
    assert s["totals"]["fp"] == 0 and s["totals"]["n_pred"] == s["totals"]["n_gt"] - 1
    big = ev.evaluate_dataset(detect, dataset, [0], str(tmp_path / "b"), min_size=10 ** 6,
                              verbose=0)
    assert big["totals"]["n_pred"] == 0 and big["means"]["dsb"] == 0.0


def test_bad_detector_output(ev, dataset, tmp_path):
    with pytest.raises(ValueError, match="image size"):
        ev.evaluate_dataset(lambda im: {"masks": np.zeros((5, 5, 1), bool)}, dataset, [0],
                            str(tmp_path), verbose=0)
    with pytest.raises(KeyError, match="masks"):
        ev.evaluate_dataset(lambda im: {"rois": None}, dataset, [0], str(tmp_path), verbose=0)
    with pytest.raises(TypeError, match="callable"):
        ev.evaluate_dataset(42, dataset, [0], str(tmp_path), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate_dataset(lambda im: {}, dataset, [], str(tmp_path), verbose=0)


def test_table_and_dataset_builders(ev, dsb_root):
    ds, ids = ev.build_dataset("synthetic", "val", limit=2)
    assert len(ids) == 2
    ds, ids = ev.build_dataset(str(dsb_root), "val", limit=3)
    assert len(ids) == 3 and len(ds.image_ids) == 68
    with pytest.raises(SystemExit, match="not a folder"):
        ev.build_dataset("/no/such/folder", "val")


def test_inference_config_from_json_beside_weights(ev, tmp_path):
    from mrcnn_nuclei.config import NucleusConfig

    class Trained(NucleusConfig):
        DETECTION_MAX_INSTANCES = 123

    weights = tmp_path / "mask_rcnn_nucleus_0003.weights.h5"
    weights.write_bytes(b"")
    Trained().save_json(tmp_path / "mask_rcnn_nucleus_0003.json")
    cfg = ev.inference_config(str(weights))
    assert cfg.DETECTION_MAX_INSTANCES == 123
    assert cfg.IMAGES_PER_GPU == 1 and cfg.BATCH_SIZE == 1
    assert cfg.IMAGE_RESIZE_MODE == "pad64"
    assert ev.inference_config(None).IMAGE_RESIZE_MODE == "pad64"
    with pytest.raises(SystemExit, match="file not found"):
        ev.build_model(str(tmp_path / "missing.h5"), str(tmp_path))


def test_weights_last_without_checkpoint(ev, tmp_path):
    with pytest.raises(SystemExit, match="--weights=last"):
        ev.build_model("last", str(tmp_path))


@pytest.mark.slow
def test_command_line_with_the_real_model(ev, tmp_path, capsys):
    """End to end: real MaskRCNN (random weights), synthetic val images, every output file."""
    out = tmp_path / "cli"
    summary = ev.main(["--dataset=synthetic", "--subset=val", "--weights=none",
                       f"--logs={tmp_path / 'logs'}", f"--out={out}", "--limit", "1",
                       "--overlays"])
    assert summary["n_images"] == 1
    assert "DSB2018 score" in capsys.readouterr().out
    for name in ("per_image.csv", "summary.json", "predictions_coco.json"):
        assert (out / name).is_file()
    assert len(list((out / "labels").glob("*.tif"))) == 1
    assert len(list((out / "overlays").glob("*.png"))) == 1


def test_perfect_detector_on_real_dsb_images(ev, dsb_root, tmp_path):
    """Real DSB masks returned as detections score 1 everywhere (masks pass through untouched)."""
    ds, ids = ev.build_dataset(str(dsb_root), "val", limit=3)

    def perfect(image):
        for i in ids:  # find this image's masks (3 images: a linear search is fine)
            if np.array_equal(ds.load_image(i), image):
                masks, cls = ds.load_mask(i)
                n = masks.shape[-1]
                return {"masks": masks, "class_ids": cls, "scores": np.ones(n),
                        "rois": np.zeros((n, 4), np.int32)}
        raise AssertionError("unknown image")

    s = ev.evaluate_dataset(perfect, ds, ids, str(tmp_path), verbose=0)
    for m in ("dsb", "aji", "aji_plus", "pq", "dice", "f1"):
        assert s["means"][m] == pytest.approx(1.0), m
    assert s["coco"]["AP"] == pytest.approx(1.0)
    assert s["totals"]["n_gt"] == s["totals"]["tp"] > 10


# ------------------------------------------------------------------ real val sets, any run NAME
def _dsb_tree(root, n_nuclei):
    """stage1_train/<id>/{images,masks} with val_ids.txt listing every id; id -> nuclei count."""
    for image_id, n in n_nuclei.items():
        (root / "stage1_train" / image_id / "images").mkdir(parents=True)
        (root / "stage1_train" / image_id / "masks").mkdir()
        Image.fromarray(np.full((32, 40, 3), 100 + n, np.uint8)).save(  # images differ
            root / "stage1_train" / image_id / "images" / f"{image_id}.png")
        for k in range(n):
            m = np.zeros((32, 40), np.uint8)
            m[2 + 8 * k:8 + 8 * k, 5:15] = 255
            Image.fromarray(m).save(root / "stage1_train" / image_id / "masks" / f"m{k}.png")
    (root / "val_ids.txt").write_text("\n".join(n_nuclei) + "\n")
    return root


def test_val_set_with_an_image_without_nuclei_is_scored(ev, tmp_path):
    root = _dsb_tree(tmp_path / "dsb", {"full": 3, "none": 0})
    ds, ids = ev.build_dataset(str(root), "val")
    table = {key(ds.load_image(i)): ds.load_mask(i)[0] for i in ids}

    def perfect(image):
        masks = table[key(image)]
        n = masks.shape[-1]
        return {"masks": masks, "scores": np.ones(n), "class_ids": np.ones(n, np.int32),
                "rois": np.zeros((n, 4), np.int32)}

    s = ev.evaluate_dataset(perfect, ds, ids, str(tmp_path / "out"), verbose=0)
    assert s["n_images"] == 2 and s["totals"]["n_gt"] == 3
    with open(tmp_path / "out" / "per_image.csv") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    for m in ("dsb", "aji", "f1", "pq"):           # empty vs empty: 1.0 in every score
        assert float(rows["none"][m]) == 1.0, m
        assert s["means"][m] == pytest.approx(1.0), m

    def nothing(image):
        return {"masks": np.zeros(image.shape[:2] + (0,), bool)}

    s = ev.evaluate_dataset(nothing, ds, ids, str(tmp_path / "out2"), verbose=0)
    for m in ("dsb", "aji", "f1", "pq"):           # same images in every mean: (0 + 1) / 2
        assert s["means"][m] == pytest.approx(0.5), m


def test_weights_last_finds_runs_of_any_name_and_checks_the_file(ev, tmp_path):
    import h5py

    from mrcnn_nuclei.config import NucleusConfig

    run = tmp_path / "logs" / "mynuclei20260101T120000"
    run.mkdir(parents=True)
    ckpt = run / "mask_rcnn_mynuclei_0002.weights.h5"
    with h5py.File(ckpt, "w") as f:
        f.create_group("layers")
    type("Mine", (NucleusConfig,), {"NAME": "mynuclei", "BACKBONE": "resnet18"})().save_json(
        run / "config.json")
    assert ev.resolve_weights("last", str(tmp_path / "logs")) == str(ckpt)
    cfg = ev.inference_config(str(ckpt))               # the run's own config, set for inference
    assert cfg.NAME == "mynuclei" and cfg.BACKBONE == "resnet18" and cfg.BATCH_SIZE == 1
    cut = tmp_path / "cut.h5"
    cut.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(SystemExit, match=r"cut\.h5 .*truncated"):
        ev.resolve_weights(str(cut), str(tmp_path / "logs"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match=r"--out folder .*cannot be created"):
        ev.main(["--dataset=synthetic", "--weights=none", f"--out={tmp_path / 'a_file' / 'o'}"])


def test_config_with_a_callable_backbone_is_a_clear_error(ev, tmp_path):
    from mrcnn_nuclei.config import ConfigError, NucleusConfig

    def my_backbone(image, stage5=True, train_bn=None):
        raise NotImplementedError

    weights = tmp_path / "mask_rcnn_custom_0001.weights.h5"
    weights.write_bytes(b"")
    type("Custom", (NucleusConfig,), {"BACKBONE": staticmethod(my_backbone)})().save_json(
        tmp_path / "config.json")
    with pytest.raises(ConfigError, match=r"BACKBONE = .*my_backbone is a function"):
        ev.inference_config(str(weights))
