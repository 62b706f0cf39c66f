"""MoNuSeg: leave-one-organ-out training and evaluation (AJI, PQ, Dice per image and mean).

    python samples/monuseg/run.py --data=/path/to/monuseg_train --test-organ=all \
        --weights=coco --epochs=20,40 --out=results/monuseg
    python samples/monuseg/run.py --data=/path/to/monuseg_train --test-organ=breast \
        --weights=last --epochs=0

--data: folder with Tissue_Images/*.tif and Annotations/*.xml.  --test-organ: one organ held out
(``breast``, ``kidney``, ``liver``, ``prostate``, ``bladder``, ``colon``, ``stomach``) or ``all``
(one fold per organ, mrcnn_nuclei.folds.leave_one_organ_out).  --epochs: per-stage totals of the
two-stage schedule (heads, all); ``0`` evaluates --weights without training.  Inference runs on
overlapping tiles (--tile-size, --overlap; mrcnn_nuclei.inference.tiled_detect) or, with
``--tile-size=0``, on the whole 1000x1000 tile.

Writes ``<out>/per_image.csv`` and ``<out>/summary.json`` and prints a per-image table with the
mean AJI, PQ and Dice per fold and overall (metrics from mrcnn_nuclei.metrics).
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

#: mean RGB of the 13 MoNuSeg training tiles in ../shared (H&E at 40x)
MONUSEG_MEAN_PIXEL = np.array([177.1, 127.8, 163.4])


def make_config(training=True, backbone="resnet50", min_confidence=0.5, steps_per_epoch=None):
    """MoNuSeg config: 512x512 random crops of the 1000x1000 tiles for training; its inference
    twin (mrcnn_nuclei.config.inference_config: whole tiles, pad64) with more proposals."""
    from mrcnn_nuclei.config import NucleusConfig, inference_config

    attrs = dict(NAME="monuseg", NUM_CLASSES=2, BACKBONE=backbone, MEAN_PIXEL=MONUSEG_MEAN_PIXEL,
                 MAX_GT_INSTANCES=400, DETECTION_MAX_INSTANCES=600,
                 DETECTION_MIN_CONFIDENCE=min_confidence,
                 IMAGES_PER_GPU=2, IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=512,
                 IMAGE_MAX_DIM=512, IMAGE_MIN_SCALE=0, STEPS_PER_EPOCH=steps_per_epoch or 100,
                 VALIDATION_STEPS=5)
    config = type("MoNuSegConfig", (NucleusConfig,), attrs)()
    if training:
        return config
    return inference_config(config, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=1024,
                            RPN_NMS_THRESHOLD=0.7, POST_NMS_ROIS_INFERENCE=3000)


def tile_detector(detector, tile_size=512, overlap=96):
    """``image -> detection dict``: ``detector.detect`` on the whole image, or on overlapping
    tiles (mrcnn_nuclei.inference.tiled_detect) when ``tile_size`` > 0 and the image is larger."""
    from mrcnn_nuclei.inference import tiled_detect
    from mrcnn_nuclei.metrics import label_to_masks

    def detect(image):
        if tile_size and max(image.shape[:2]) > tile_size:
            label, scores = tiled_detect(lambda tile: detector.detect([tile])[0], image,
                                         tile_size=tile_size, overlap=overlap,
                                         return_scores=True)
            return {"masks": label_to_masks(label, n_instances=len(scores)), "scores": scores}
        return detector.detect([image])[0]

    return detect


def evaluate(detector, dataset, image_ids=None, fold="", tile_size=512, overlap=96,
             verbose=True):
    """Score ``detector`` on images of ``dataset`` -> list of per-image dicts (AJI, PQ, Dice);
    the loop is mrcnn_nuclei.evaluation.evaluate_dataset."""
    from mrcnn_nuclei.evaluation import evaluate_dataset

    ids = list(dataset.image_ids if image_ids is None else image_ids)
    s = evaluate_dataset(tile_detector(detector, tile_size, overlap), dataset, ids,
                         coco_backend="numpy", pannuke=False, verbose=0)
    rows = []
    for r in s["per_image"]:
        info = dataset.image_info[r["index"]]
        row = {"fold": fold, "image": info["id"], "organ": info.get("organ"), "n_gt": r["n_gt"],
               "n_pred": r["n_pred"], "AJI": r["aji"], "PQ": r["pq"], "Dice": r["dice"]}
        rows.append(row)
        if verbose:
            print(f"{row['image']:<28} {str(row['organ']):<9} AJI {row['AJI']:.4f}  "
                  f"PQ {row['PQ']:.4f}  Dice {row['Dice']:.4f}")
    return rows


def summarise(rows):
    """Mean AJI/PQ/Dice per fold and overall -> dict."""
    def means(rs):
        return {k: float(np.nanmean([r[k] for r in rs])) if rs else float("nan")
                for k in ("AJI", "PQ", "Dice")} | {"images": len(rs)}

    folds = {}
    for r in rows:
        folds.setdefault(r["fold"], []).append(r)
    return {"overall": means(rows), "per_fold": {f: means(rs) for f, rs in folds.items()}}


def format_table(summary):
    """Per-fold means and the overall mean as text."""
    lines = [f"{'fold':<12} {'images':>6} {'AJI':>7} {'PQ':>7} {'Dice':>7}"]
    for name, v in list(summary["per_fold"].items()) + [("mean", summary["overall"])]:
        lines.append(f"{str(name):<12} {v['images']:>6} {v['AJI']:>7.4f} {v['PQ']:>7.4f} "
                     f"{v['Dice']:>7.4f}")
    return "\n".join(lines)


def write_outputs(out_dir, rows, summary):
    """per_image.csv and summary.json in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "per_image.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["fold", "image", "organ", "n_gt", "n_pred", "AJI",
                                               "PQ", "Dice"])
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"summary": summary, "per_image": rows}, f, indent=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--data", required=True, help="MoNuSeg folder (Tissue_Images/, Annotations/)")
    p.add_argument("--test-organ", default="all", help="organ to hold out, or 'all' (default)")
    p.add_argument("--weights", default="coco", help="coco | imagenet | last | none | PATH")
    p.add_argument("--epochs", default="20,40",
                   help="stage totals for heads,all (default 20,40); 0 = no training")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--min-confidence", type=float, default=0.5, help="DETECTION_MIN_CONFIDENCE")
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--tile-size", type=int, default=512, help="inference tile (0 = whole image)")
    p.add_argument("--overlap", type=int, default=96,
                   help="tile overlap in pixels, above the largest nucleus diameter")
    p.add_argument("--logs", default=str(_REPO / "logs"), help="model_dir for checkpoints")
    p.add_argument("--out", default=str(_REPO / "results" / "monuseg"), help="output folder")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mrcnn_nuclei.datasets.monuseg import MoNuSegDataset
    from mrcnn_nuclei.folds import leave_one_organ_out
    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.schedules import build_schedule, run_schedule
    from mrcnn_nuclei.weights import load_start_weights

    everything = MoNuSegDataset().load(args.data)
    everything.prepare()
    names = {i: everything.image_info[i]["id"] for i in everything.image_ids}
    folds = leave_one_organ_out(everything)
    if args.test_organ != "all":
        folds = [f for f in folds if f[0] == args.test_organ]
        if not folds:
            known = [f[0] for f in leave_one_organ_out(everything)]
            raise SystemExit(f"--test-organ={args.test_organ}: no such organ in {args.data}; "
                             f"known: {', '.join(known)} or 'all'")
    epochs = [int(e) for e in str(args.epochs).split(",") if e.strip()]
    rows = []
    for organ, train_ids, test_ids in folds:
        print(f"\n=== fold: hold out {organ} ({len(train_ids)} train, {len(test_ids)} test) ===")
        weights = args.weights
        if epochs != [0]:
            train_ds = MoNuSegDataset().load(args.data, names=[names[i] for i in train_ids])
            train_ds.prepare()
            config = make_config(True, args.backbone, steps_per_epoch=args.steps_per_epoch)
            model = MaskRCNN("training", config, os.path.join(args.logs, f"monuseg_{organ}"))
            load_start_weights(model, args.weights)
            run_schedule(model, train_ds, None, build_schedule("matterport", epochs=epochs),
                         config.LEARNING_RATE)
            weights = model.find_last()
        infer = MaskRCNN("inference", make_config(False, args.backbone, args.min_confidence),
                         os.path.join(args.logs, f"monuseg_{organ}"))
        load_start_weights(infer, weights)
        rows += evaluate(infer, everything, test_ids, fold=organ, tile_size=args.tile_size,
                         overlap=args.overlap)
    summary = summarise(rows)
    print()
    print(format_table(summary))
    write_outputs(args.out, rows, summary)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
