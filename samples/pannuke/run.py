"""PanNuke: train Mask R-CNN on some folds, evaluate bPQ / mPQ per tissue on another.

    python samples/pannuke/run.py --data=/path/to/pannuke --folds=1,2:3 --classes=binary \
        --weights=coco --epochs=20,40 --out=results/pannuke
    python samples/pannuke/run.py --data=/path/to/pannuke --folds=:3 --weights=last --epochs=0

--data: folder with the PanNuke fold folders (``Fold 1/images/fold1/images.npy`` ... or flat
``fold1/images.npy``).  --folds TRAIN:TEST, e.g. ``1,2:3`` (the usual three-way rotation);
``:3`` evaluates only.  --classes: ``binary`` (one nucleus class; bPQ) or ``multi`` (the five
PanNuke types; bPQ and mPQ).  --epochs: per-stage totals of Matterport's two-stage schedule
(heads, all), ``0`` skips training (evaluate --weights as they are).

Writes ``<out>/per_image.csv``, ``<out>/per_tissue.csv`` and ``<out>/summary.json`` and prints the
per-tissue table.  bPQ/mPQ follow Gamper et al. 2020 (mrcnn_nuclei.metrics.pannuke_bpq/_mpq):
per-image PQ, averaged per tissue, then over tissues.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402


# ------------------------------------------------------------------------------------ configs
def make_config(classes="binary", training=True, backbone="resnet50", min_confidence=0.5,
                steps_per_epoch=None):
    """PanNuke config: 256x256 patches upsampled to 512 (nuclei are small), nucleus anchors."""
    from mrcnn_nuclei.config import NucleusConfig

    attrs = dict(
        NAME="pannuke_" + classes,
        NUM_CLASSES=1 + (5 if classes == "multi" else 1),
        BACKBONE=backbone,
        IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=512, IMAGE_MIN_SCALE=0,
        MEAN_PIXEL=np.array([184.0, 141.0, 180.0]),  # H&E-like; replace with your own means
        MAX_GT_INSTANCES=200, DETECTION_MAX_INSTANCES=300,
        DETECTION_MIN_CONFIDENCE=min_confidence,
    )
    if training:
        attrs.update(IMAGES_PER_GPU=2, STEPS_PER_EPOCH=steps_per_epoch or 500, VALIDATION_STEPS=10)
    else:
        attrs.update(IMAGES_PER_GPU=1, RPN_NMS_THRESHOLD=0.7)
    return type("PanNukeConfig", (NucleusConfig,), attrs)()


# ------------------------------------------------------------------------------------ evaluation
def _prediction(result, height, width):
    """detect() dict -> (label [H, W] int32, class_map [H, W] int32)."""
    from mrcnn_nuclei.postprocess import masks_to_label

    masks = np.asarray(result["masks"])
    if masks.shape[-1] == 0:
        zero = np.zeros((height, width), np.int32)
        return zero, zero
    label = masks_to_label(masks, result.get("scores"))
    class_ids = np.concatenate([[0], np.asarray(result["class_ids"], np.int32)])
    return label, class_ids[label].astype(np.int32)


def _gt_type_maps(dataset, image_id):
    """Ground-truth per-type instance maps [H, W, 5] (from the dataset, or its masks)."""
    if hasattr(dataset, "load_type_maps"):
        return np.asarray(dataset.load_type_maps(image_id))
    masks, class_ids = dataset.load_mask(image_id)
    ids = np.arange(1, masks.shape[-1] + 1)
    maps = np.zeros(masks.shape[:2] + (5,), np.int32)
    for c in range(1, 6):  # the five type channels; instance k keeps id k + 1
        sel = np.asarray(class_ids) == c
        if sel.any():
            maps[..., c - 1] = (masks[..., sel] * ids[sel]).max(-1)
    return maps


def _tissue_table(values, tissues):
    """{tissue: nan-mean}, and the mean over tissues."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in dict.fromkeys(tissues):
            out[t] = float(np.nanmean([v for v, tt in zip(values, tissues) if tt == t]))
        overall = float(np.nanmean(list(out.values()))) if out else float("nan")
    return overall, out


def evaluate(detector, dataset, classes="binary", out_dir=None, limit=None, verbose=True):
    """Detect every image of ``dataset`` and score it -> summary dict.

    detector: anything with ``detect([image]) -> [dict]`` (MaskRCNN, Ensemble, ...).
    Per image: binary PQ (all nuclei) and, for ``classes="multi"``, the multi-class PQ; both go
    through mrcnn_nuclei.metrics.pannuke_bpq/pannuke_mpq one image at a time (memory stays flat),
    then per-tissue means and the mean over tissues.  Writes CSV/JSON when ``out_dir`` is set.
    """
    from mrcnn_nuclei.metrics import pannuke_bpq, pannuke_mpq

    ids = list(dataset.image_ids)[:limit]
    rows, bvals, mvals, tissues = [], [], [], []
    for image_id in ids:
        info = dataset.image_info[image_id]
        image = dataset.load_image(image_id)
        h, w = image.shape[:2]
        gt = _gt_type_maps(dataset, image_id)
        label, class_map = _prediction(detector.detect([image])[0], h, w)
        tissue = str(info.get("tissue") or "unknown")
        b = pannuke_bpq([gt], [label], [tissue])[0]
        m = pannuke_mpq([gt], [(label, class_map)], [tissue])[0] if classes == "multi" else \
            float("nan")
        rows.append({"image": info["id"], "tissue": tissue, "n_gt": int(len(np.unique(
            gt[gt > 0]))), "n_pred": int(label.max()), "bPQ": b, "mPQ": m})
        bvals.append(b)
        mvals.append(m)
        tissues.append(tissue)
    bpq, b_tissue = _tissue_table(bvals, tissues)
    mpq, m_tissue = _tissue_table(mvals, tissues) if classes == "multi" else (None, {})
    summary = {"images": len(rows), "classes": classes, "bPQ": bpq, "mPQ": mpq,
               "per_tissue": {t: {"bPQ": b_tissue[t], "mPQ": m_tissue.get(t),
                                  "images": tissues.count(t)} for t in b_tissue}}
    if verbose:
        print(format_table(summary))
    if out_dir:
        write_outputs(out_dir, rows, summary)
    return summary


def format_table(summary):
    """Per-tissue table as text."""
    lines = [f"{'tissue':<20} {'images':>6} {'bPQ':>7} {'mPQ':>7}"]
    for t, v in sorted(summary["per_tissue"].items()):
        m = "" if v["mPQ"] is None else f"{v['mPQ']:.4f}"
        lines.append(f"{t:<20} {v['images']:>6} {v['bPQ']:>7.4f} {m:>7}")
    m = "" if summary["mPQ"] is None else f"{summary['mPQ']:.4f}"
    lines.append(f"{'mean over tissues':<20} {summary['images']:>6} {summary['bPQ']:>7.4f} {m:>7}")
    return "\n".join(lines)


def write_outputs(out_dir, rows, summary):
    """per_image.csv, per_tissue.csv, summary.json in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "tissue", "n_gt", "n_pred", "bPQ", "mPQ"])
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "per_tissue.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tissue", "images", "bPQ", "mPQ"])
        for t, v in sorted(summary["per_tissue"].items()):
            writer.writerow([t, v["images"], v["bPQ"], v["mPQ"]])
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, allow_nan=True)


# ------------------------------------------------------------------------------------ CLI
def parse_folds(text):
    """``"1,2:3"`` -> ([1, 2], [3]); ``":3"`` -> ([], [3])."""
    if ":" not in str(text):
        raise SystemExit(f"--folds={text}: expected TRAIN:TEST, e.g. 1,2:3 (or :3 to evaluate only)")
    train, test = str(text).split(":", 1)
    as_list = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    try:
        train, test = as_list(train), as_list(test)
    except ValueError:
        raise SystemExit(f"--folds={text}: fold numbers must be integers, e.g. 1,2:3") from None
    if not test:
        raise SystemExit(f"--folds={text}: name at least one test fold after ':'")
    if set(train) & set(test):
        raise SystemExit(f"--folds={text}: a fold cannot be in both train and test")
    return train, test


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--data", required=True, help="PanNuke root folder (fold folders)")
    p.add_argument("--folds", default="1,2:3", help="TRAIN:TEST fold numbers (default 1,2:3)")
    p.add_argument("--classes", choices=("binary", "multi"), default="binary")
    p.add_argument("--weights", default="coco",
                   help="coco | imagenet | last | none | PATH (start point, or the model to "
                        "evaluate with --epochs=0)")
    p.add_argument("--epochs", default="20,40",
                   help="stage totals for heads,all (default 20,40); 0 = no training")
    p.add_argument("--backbone", default="resnet50", help="resnet50 (default), resnet101, ...")
    p.add_argument("--min-confidence", type=float, default=0.5, help="DETECTION_MIN_CONFIDENCE")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="training steps per epoch")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips, hue)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--logs", default=str(_REPO / "logs"), help="model_dir for checkpoints")
    p.add_argument("--out", default=str(_REPO / "results" / "pannuke"), help="output folder")
    return p.parse_args(argv)


class _TTADetector:
    def __init__(self, model):
        self.model = model

    def detect(self, images):
        from mrcnn_nuclei.inference import tta_detect

        return [tta_detect(self.model, img) for img in images]


def main(argv=None):
    args = parse_args(argv)
    from mrcnn_nuclei.datasets.pannuke import PanNukeDataset
    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.schedules import build_schedule, run_schedule
    from mrcnn_nuclei.weights import load_start_weights

    train_folds, test_folds = parse_folds(args.folds)
    epochs = [int(e) for e in str(args.epochs).split(",") if e.strip()]
    weights = args.weights
    if train_folds and epochs != [0]:
        train_ds = PanNukeDataset().load(args.data, folds=train_folds, classes=args.classes)
        train_ds.prepare()
        config = make_config(args.classes, True, args.backbone,
                             steps_per_epoch=args.steps_per_epoch)
        model = MaskRCNN("training", config, args.logs)
        load_start_weights(model, args.weights)
        schedule = build_schedule("matterport", epochs=epochs)
        run_schedule(model, train_ds, None, schedule, config.LEARNING_RATE)
        weights = model.find_last()
    test_ds = PanNukeDataset().load(args.data, folds=test_folds, classes=args.classes)
    test_ds.prepare()
    infer = MaskRCNN("inference", make_config(args.classes, False, args.backbone,
                                              args.min_confidence), args.logs)
    path, _ = load_start_weights(infer, weights)
    print(f"evaluating {len(test_ds.image_ids)} images of fold(s) {test_folds} with weights "
          f"{path or 'none (random init)'}")
    detector = _TTADetector(infer) if args.tta else infer
    evaluate(detector, test_ds, args.classes, args.out, args.limit)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
