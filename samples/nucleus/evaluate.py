"""Evaluate a nucleus Mask R-CNN on a dataset subset: every metric, per image and on average.

Usage::

    python samples/nucleus/evaluate.py --dataset=../shared/data/dsb2018_stage1_train --subset=val \\
        --weights=last --logs=logs --out=eval_out [--limit N] [--overlays] [--min-size 0]
    python samples/nucleus/evaluate.py --dataset=synthetic --subset=val --weights=none \\
        --logs=logs --out=eval_smoke --limit 4

``--weights``: a weights file, ``last`` (newest checkpoint under ``--logs``, of a run of any config
NAME) or ``none`` (random initialisation; only for smoke tests).  A config JSON beside the weights
(same stem + ``.json``, or ``config.json`` in the weights folder) overrides
``NucleusInferenceConfig``; inference settings (one image per batch, ``pad64`` instead of the
training ``crop``) are then forced.  A weights file that leaves layers of the model unfilled
(e.g. a ResNet-18 checkpoint with a ResNet-34 config) is an error naming them unless
``--allow-partial-weights`` is given.  The weights file and ``--out`` are checked before the
model is built.

Images without nuclei (an empty ``masks/`` folder in the DSB layout) are scored: an empty
prediction scores 1.0 in every metric (DSB, AJI, F1, PQ ...), any prediction 0.0.

Outputs in ``--out``: ``per_image.csv`` (one row per image, every metric of
``mrcnn_nuclei.metrics.evaluate_all``), ``summary.json`` (means, COCO mask AP over the subset,
PanNuke bPQ/mPQ with ``image_info["tissue"]`` as the tissue, ``"all"`` when absent, settings),
``predictions_coco.json`` (COCO results, image ids listed in summary.json),
``labels/<id>.tif`` (predicted label images) and with ``--overlays`` ``overlays/<id>.png``
(green = true positive, red = false positive, yellow = missed nucleus).

Post-processing of each detection: overlapping masks resolved by score (each pixel to the
higher-scoring nucleus), instances smaller than ``--min-size`` pixels dropped, optional
``--fill-holes``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

import numpy as np

_REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from mrcnn_nuclei import export, metrics, postprocess  # noqa: E402
from mrcnn_nuclei.fileio import atomic_write_text  # noqa: E402

#: Per-image metrics shown in the table (keys of metrics.evaluate_all).
METRICS = ["dsb", "aji", "aji_plus", "pq", "dq", "sq", "dice", "matched_iou", "f1", "precision",
           "recall"]
COUNTS = ["n_gt", "n_pred", "tp", "fp", "fn"]


# --------------------------------------------------------------------------- the loop
def as_detect_fn(model_or_detect_fn):
    """A callable ``image [H, W, C] -> detection dict`` from a MaskRCNN or a callable."""
    if hasattr(model_or_detect_fn, "detect"):
        model = model_or_detect_fn
        return lambda image: model.detect([image], verbose=0)[0]
    if callable(model_or_detect_fn):
        return model_or_detect_fn
    raise TypeError(f"model_or_detect_fn must be a MaskRCNN (with .detect) or a callable "
                    f"image -> dict, got {type(model_or_detect_fn).__name__}")


def postprocess_detection(r, image_shape, min_size=0, fill_holes=False):
    """Resolved, filtered instances of one detection dict.

    Args: ``r`` with ``masks [H, W, N]`` bool and optional ``scores [N]``, ``class_ids [N]``;
    ``image_shape`` of the input image. Returns ``(masks [H, W, K], scores [K], class_ids [K])``.
    """
    if "masks" not in r:
        raise KeyError("the detection dict has no 'masks' entry; the detector must return "
                       "{'rois', 'class_ids', 'scores', 'masks' [H, W, N]} like MaskRCNN.detect")
    masks = np.asarray(r["masks"])
    if masks.ndim != 3 or masks.shape[:2] != tuple(image_shape[:2]):
        raise ValueError(f"detection masks have shape {masks.shape} but the image is "
                         f"{tuple(image_shape[:2])}: masks must be [H, W, N] at image size")
    n = masks.shape[-1]
    scores = np.asarray(r.get("scores", np.ones(n)), np.float64).ravel()
    class_ids = np.asarray(r.get("class_ids", np.ones(n)), np.int64).ravel()
    if scores.size != n or class_ids.size != n:
        raise ValueError(f"detection has {n} masks but {scores.size} scores and "
                         f"{class_ids.size} class_ids")
    masks = postprocess.resolve_overlaps(masks > 0, scores)
    if fill_holes:
        masks = postprocess.resolve_overlaps(postprocess.fill_holes(masks), scores)
    keep = masks.sum(axis=(0, 1)) >= max(int(min_size), 1)  # also drops emptied masks
    return masks[..., keep], scores[keep], class_ids[keep]


def _safe_name(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "image"


def _atomic_text(path, text):
    return atomic_write_text(path, text, newline="")


def _nanmean(values):
    vals = np.asarray(values, np.float64)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def evaluate_dataset(model_or_detect_fn, dataset, image_ids, out_dir, overlays=False,
                     min_size=0, fill_holes=False, coco_backend="pycocotools", verbose=1):
    """Detect, post-process and score every image; write the result files. Returns the summary dict.

    Args:
        model_or_detect_fn: a ``MaskRCNN`` in inference mode or any callable
            ``image [H, W, C] uint8 -> {"masks": [H, W, N] bool, "scores": [N], ...}``.
        dataset: a prepared ``Dataset`` (``load_image``, ``load_mask``, ``image_info``).
        image_ids: internal image ids to evaluate.
        out_dir: folder for per_image.csv, summary.json, predictions_coco.json, labels/, overlays/.
        overlays: also write TP/FP/FN outline PNGs. min_size, fill_holes: post-processing.
        coco_backend: ``"pycocotools"`` or ``"numpy"`` (same numbers, faster).
        verbose: 0 silent, 1 table, 2 also one line per image.
    Returns:
        dict with ``means`` (metric -> mean over images; nan images skipped), ``coco`` (AP, AP50,
        AP75), ``pannuke`` (``bpq``, ``mpq`` over ``dataset.num_classes - 1`` classes, per
        tissue; images without ground-truth nuclei skipped), ``totals`` (summed counts),
        ``n_images`` and ``image_ids``.
    """
    from mrcnn_nuclei.visualize import save_tp_fp_fn_overlay

    detect = as_detect_fn(model_or_detect_fn)
    image_ids = list(image_ids)
    if not image_ids:
        raise ValueError("image_ids is empty: nothing to evaluate (check --subset / --limit)")
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    rows, gts, preds, pred_scores, coco_results, names = [], [], [], [], [], {}
    gt_classes, pred_classes, tissues = [], [], []
    n_classes = max(1, int(getattr(dataset, "num_classes", 2)) - 1)
    t_start = time.perf_counter()
    for k, image_id in enumerate(image_ids):
        info = dataset.image_info[image_id]
        name = _safe_name(info.get("id", image_id))
        image = dataset.load_image(image_id)
        gt_masks, gt_class_ids = dataset.load_mask(image_id)
        gt = postprocess.masks_to_label(gt_masks)
        t0 = time.perf_counter()
        r = detect(image)
        t_detect = time.perf_counter() - t0
        masks, scores, class_ids = postprocess_detection(r, image.shape, min_size, fill_holes)
        pred = postprocess.masks_to_label(masks)  # id k + 1 <-> scores[k], no overlaps left
        row = {"image_id": name, "index": int(image_id)}
        row.update(metrics.evaluate_all(gt, pred))
        row["detect_seconds"] = round(t_detect, 4)
        rows.append(row)
        dtype = export.label_dtype(pred)
        gts.append(gt.astype(export.label_dtype(gt)))
        preds.append(pred.astype(dtype))
        pred_scores.append(scores)
        # class maps for PanNuke-style mPQ (label id k + 1 <-> class_ids[k])
        gt_classes.append(np.concatenate([[0], np.asarray(gt_class_ids).ravel()]).astype(
            np.int32)[gt])
        pred_classes.append(np.concatenate([[0], class_ids]).astype(np.int32)[pred])
        tissues.append(str(info.get("tissue") or "all"))
        coco_id = k + 1
        names[coco_id] = name
        coco_results.extend(export.coco_results(coco_id, masks, scores, class_ids))
        export.save_label_tiff(os.path.join(out_dir, "labels", f"{name}.tif"), pred)
        if overlays:
            save_tp_fp_fn_overlay(image, gt, pred, os.path.join(out_dir, "overlays", f"{name}.png"))
        if verbose >= 2:
            print(f"[{k + 1}/{len(image_ids)}] {name}: dsb={row['dsb']:.3f} aji={row['aji']:.3f} "
                  f"pq={row['pq']:.3f} gt={row['n_gt']} pred={row['n_pred']} "
                  f"({t_detect:.2f}s detect)", flush=True)

    coco = metrics.coco_mask_ap(gts, preds, pred_scores, backend=coco_backend)
    bpq, bpq_tissue = metrics.pannuke_bpq(gts, preds, tissues)
    mpq, mpq_tissue = metrics.pannuke_mpq(list(zip(gts, gt_classes)),
                                          list(zip(preds, pred_classes)), tissues, n_classes)
    pannuke = {"bpq": bpq, "mpq": mpq, "n_classes": n_classes,
               "per_tissue": {t: {"bpq": bpq_tissue[t], "mpq": mpq_tissue[t],
                                  "images": tissues.count(t)} for t in bpq_tissue}}
    fields = ["image_id", "index"] + METRICS + COUNTS + ["detect_seconds"]
    lines = [",".join(fields)]
    for row in rows:
        lines.append(",".join(_fmt(row[f]) for f in fields))
    _atomic_text(os.path.join(out_dir, "per_image.csv"), "\n".join(lines) + "\n")
    means = {m: _nanmean([row[m] for row in rows]) for m in METRICS}
    totals = {c: int(sum(row[c] for row in rows)) for c in COUNTS}
    summary = {
        "n_images": len(rows), "means": means, "coco": coco, "pannuke": pannuke,
        "totals": totals,
        "dsb_score_dataset": means["dsb"],
        "post_processing": {"resolve_overlaps": "score", "min_size": int(min_size),
                            "fill_holes": bool(fill_holes)},
        "seconds": round(time.perf_counter() - t_start, 2),
        "image_ids": [row["image_id"] for row in rows],
        "coco_image_ids": {str(k): v for k, v in names.items()},
    }
    _atomic_text(os.path.join(out_dir, "summary.json"), json.dumps(_jsonable(summary), indent=2))
    export.save_coco_json(os.path.join(out_dir, "predictions_coco.json"), coco_results)
    if verbose:
        print(format_table(summary))
    return summary


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6f}"
    return str(v)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None  # JSON has no NaN
    return x


def format_table(summary):
    """The printed table: one line per metric (mean over images) and the COCO APs."""
    lines = [f"{'metric':<22}{'mean':>10}", "-" * 32]
    names = {"dsb": "DSB2018 score", "aji": "AJI", "aji_plus": "AJI+", "pq": "PQ", "dq": "DQ",
             "sq": "SQ", "dice": "Dice (pixel)", "matched_iou": "matched mean IoU",
             "f1": "F1 @0.5", "precision": "precision @0.5", "recall": "recall @0.5"}
    for m in METRICS:
        lines.append(f"{names[m]:<22}{summary['means'][m]:>10.4f}")
    for k in ("AP", "AP50", "AP75"):
        lines.append(f"{'COCO mask ' + k:<22}{summary['coco'][k]:>10.4f}")
    pannuke = summary.get("pannuke")
    if pannuke:
        lines.append(f"{'PanNuke bPQ':<22}{pannuke['bpq']:>10.4f}")
        lines.append(f"{'PanNuke mPQ':<22}{pannuke['mpq']:>10.4f}")
    t = summary["totals"]
    lines.append("-" * 32)
    lines.append(f"{summary['n_images']} images, {t['n_gt']} GT nuclei, {t['n_pred']} predicted, "
                 f"TP {t['tp']} FP {t['fp']} FN {t['fn']} (IoU > 0.5)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def inference_config(weights_path=None):
    """``NucleusInferenceConfig``, or the config JSON beside ``weights_path`` set for inference."""
    from mrcnn_nuclei.config import NucleusInferenceConfig

    candidates = []
    if weights_path:
        from mrcnn_nuclei.weights import config_path_beside

        candidates = [config_path_beside(weights_path),
                      os.path.join(os.path.dirname(os.path.abspath(weights_path)), "config.json")]
    for path in candidates:
        if os.path.exists(path):
            # read_json: a clear ConfigError for a config saved with a callable BACKBONE
            values = dict(NucleusInferenceConfig.read_json(path))
            values.update(GPU_COUNT=1, IMAGES_PER_GPU=1)
            if values.get("IMAGE_RESIZE_MODE") == "crop":
                values["IMAGE_RESIZE_MODE"] = "pad64"
            print(f"config: {path}")
            return NucleusInferenceConfig.from_dict(values)
    return NucleusInferenceConfig()


def resolve_weights(weights, logs):
    """Weights path for ``--weights`` (file, ``last`` or ``none`` -> None), checked cheaply
    (missing, truncated or foreign file) before any model is built; SystemExit otherwise."""
    from mrcnn_nuclei.model import find_last_checkpoint
    from mrcnn_nuclei.weights import check_weights_file

    if weights == "none":
        return None
    if weights == "last":
        try:  # runs of any config NAME: the config beside the checkpoint says which
            path = find_last_checkpoint(logs, None)
        except FileNotFoundError as e:
            raise SystemExit(f"--weights=last: {e}") from None
    else:
        path = weights
        if not os.path.exists(path):
            raise SystemExit(f"--weights={weights}: file not found (give a weights file, 'last' "
                             "for the newest checkpoint under --logs, or 'none')")
    try:
        check_weights_file(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--weights={weights}: {e}") from None
    return path


def build_model(weights, logs, allow_partial=False):
    """MaskRCNN in inference mode with ``weights`` (path, ``last`` or ``none``).

    allow_partial: accept a file that leaves layers unfilled (else PartialWeightsError)."""
    from mrcnn_nuclei.model import MaskRCNN

    path = resolve_weights(weights, logs)
    config = inference_config(path)
    model = MaskRCNN(mode="inference", config=config, model_dir=logs)
    if path:
        print(f"weights: {path}")
        model.load_weights(path, by_name=True, allow_partial=allow_partial)
    return model


def build_dataset(dataset, subset, limit=None, seed=1000):
    """Prepared dataset and image ids: a DSB folder or ``synthetic`` (val uses ``seed``)."""
    if dataset == "synthetic":
        from mrcnn_nuclei.datasets import SyntheticNucleiDataset

        ds = SyntheticNucleiDataset()
        ds.load(limit or 8, seed=seed if subset == "val" else seed + 1)
    else:
        from mrcnn_nuclei.datasets import DSBDataset

        if not os.path.isdir(dataset):
            raise SystemExit(f"--dataset={dataset}: not a folder (give the DSB folder holding "
                             "stage1_train/ and val_ids.txt, or 'synthetic')")
        ds = DSBDataset()
        ds.load(dataset, subset=subset, keep_empty=True)  # images with no nuclei are scored
    ds.prepare()
    ids = list(ds.image_ids)
    return ds, ids[:limit] if limit else ids


def main(argv=None):
    """Command-line entry point; returns the summary dict."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="DSB folder or 'synthetic'")
    ap.add_argument("--subset", default="val", choices=["val", "train"])
    ap.add_argument("--weights", required=True, help="weights file, 'last' or 'none'")
    ap.add_argument("--logs", default="logs", help="model_dir (where 'last' looks)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ap.add_argument("--overlays", action="store_true", help="write overlays/<id>.png")
    ap.add_argument("--min-size", type=int, default=0, help="drop nuclei below N pixels")
    ap.add_argument("--fill-holes", action="store_true", help="fill holes in predicted masks")
    ap.add_argument("--coco-backend", default="pycocotools", choices=["pycocotools", "numpy"])
    ap.add_argument("--allow-partial-weights", action="store_true",
                    help="accept a weights file that leaves layers of the model unfilled (random)")
    ap.add_argument("--verbose", type=int, default=1)
    args = ap.parse_args(argv)
    from mrcnn_nuclei.fileio import check_writable_dir

    try:
        check_writable_dir(args.out, "--out folder")
        resolve_weights(args.weights, args.logs)  # fails fast, before the datasets and model
        dataset, ids = build_dataset(args.dataset, args.subset, args.limit)
        model = build_model(args.weights, args.logs, allow_partial=args.allow_partial_weights)
    except (OSError, ValueError) as err:
        if args.verbose > 1:
            raise
        raise SystemExit(f"error: {err}") from None
    return evaluate_dataset(model, dataset, ids, args.out, overlays=args.overlays,
                            min_size=args.min_size, fill_holes=args.fill_holes,
                            coco_backend=args.coco_backend, verbose=args.verbose)


if __name__ == "__main__":
    main()
