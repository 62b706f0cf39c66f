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
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402


# ------------------------------------------------------------------------------------ configs
def make_config(classes="binary", training=True, backbone="resnet50", min_confidence=0.5,
                steps_per_epoch=None):
    """PanNuke config: 256x256 patches upsampled to 512 (nuclei are small), nucleus anchors;
    ``training=False``: its inference twin (mrcnn_nuclei.config.inference_config) with
    Matterport's inference RPN NMS threshold 0.7."""
    from mrcnn_nuclei.config import NucleusConfig, inference_config

    attrs = dict(
        NAME="pannuke_" + classes,
        NUM_CLASSES=1 + (5 if classes == "multi" else 1),
        BACKBONE=backbone,
        IMAGE_RESIZE_MODE="square", IMAGE_MIN_DIM=512, IMAGE_MAX_DIM=512, IMAGE_MIN_SCALE=0,
        MEAN_PIXEL=np.array([184.0, 141.0, 180.0]),  # H&E-like; replace with your own means
        MAX_GT_INSTANCES=200, DETECTION_MAX_INSTANCES=300,
        DETECTION_MIN_CONFIDENCE=min_confidence,
        IMAGES_PER_GPU=2, STEPS_PER_EPOCH=steps_per_epoch or 500, VALIDATION_STEPS=10,
    )
    config = type("PanNukeConfig", (NucleusConfig,), attrs)()
    return config if training else inference_config(config, RPN_NMS_THRESHOLD=0.7)


# ------------------------------------------------------------------------------------ evaluation
def evaluate(detector, dataset, classes="binary", out_dir=None, limit=None, verbose=True):
    """Detect every image of ``dataset`` and score it -> summary dict.

    detector: anything with ``detect([image]) -> [dict]`` (MaskRCNN, Ensemble, ...).
    The loop is mrcnn_nuclei.evaluation.evaluate_dataset: per image binary PQ (all nuclei) and,
    for ``classes="multi"``, the multi-class PQ, then per-tissue means and the mean over
    tissues (mrcnn_nuclei.metrics.tissue_means).  Writes CSV/JSON when ``out_dir`` is set.
    """
    from mrcnn_nuclei.evaluation import evaluate_dataset

    multi = classes == "multi"
    s = evaluate_dataset(detector, dataset, list(dataset.image_ids)[:limit], pannuke=True,
                         default_tissue="unknown", coco_backend="numpy", verbose=0)
    rows = [{"image": dataset.image_info[r["index"]]["id"], "tissue": r["tissue"],
             "n_gt": r["n_gt"], "n_pred": r["n_pred"], "bPQ": r["bpq"],
             "mPQ": r["mpq"] if multi else float("nan")} for r in s["per_image"]]
    pan = s["pannuke"]
    summary = {"images": len(rows), "classes": classes, "bPQ": pan["bpq"],
               "mPQ": pan["mpq"] if multi else None,
               "per_tissue": {t: {"bPQ": v["bpq"], "mPQ": v["mpq"] if multi else None,
                                  "images": v["images"]} for t, v in pan["per_tissue"].items()}}
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
