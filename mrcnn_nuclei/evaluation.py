"""The one evaluation loop: detect, post-process, label images, every metric, optional files.

:func:`evaluate_dataset` runs, for each image of a dataset, the detector, the post-processing
(:class:`mrcnn_nuclei.modelfolder.PostProcess`: score threshold, overlaps by the package's one
rule, minimum size), the label images and :func:`mrcnn_nuclei.metrics.evaluate_all`, then the
set-level COCO mask AP and the PanNuke bPQ/mPQ per tissue. It returns a summary dict with the
per-image rows; with ``out_dir`` it also writes ``per_image.csv``, ``summary.json``,
``predictions_coco.json`` and ``labels/<id>.tif`` (and ``overlays/<id>.png``).
``samples/nucleus/evaluate.py``, ``mrcnn-nuclei evaluate``, the PanNuke and MoNuSeg samples and
the time-budgeted recipe all call it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import weakref

import numpy as np

from . import export, metrics
from .metrics.pannuke import tissue_means
from .modelfolder import PostProcess

__all__ = ["evaluate_dataset", "detect_images", "as_detect_fn", "postprocess_detection",
           "postprocess_label", "ground_truth", "format_table", "write_results", "safe_name",
           "METRICS", "COUNTS"]

#: Per-image metrics (keys of metrics.evaluate_all), in table order.
METRICS = ["dsb", "aji", "aji_plus", "pq", "dq", "sq", "dice", "matched_iou", "f1", "precision",
           "recall"]
COUNTS = ["n_gt", "n_pred", "tp", "fp", "fn"]


def as_detect_fn(model, settings=None):
    """A callable ``image [H, W, C] -> detection dict`` from a MaskRCNN (anything with
    ``detect``), a model folder path (:func:`mrcnn_nuclei.modelfolder.load_model`) or a
    callable; also returns the model's own post-processing settings (or None)."""
    if isinstance(model, (str, os.PathLike)):
        from .modelfolder import load_model

        model = load_model(model)
    if hasattr(model, "detect"):
        own = getattr(model, "postprocess", None)
        chosen = settings or own or PostProcess()
        return (lambda image: chosen.detect(model, image)), own
    if callable(model):
        return model, None
    raise TypeError(f"model must be a MaskRCNN (with .detect), a model folder or a callable "
                    f"image -> dict, got {type(model).__name__}")


def postprocess_detection(r, image_shape, min_size=0, fill_holes=False, settings=None):
    """Resolved, filtered instances of one detection dict (``settings`` or the defaults with
    ``min_size``/``fill_holes``); see :meth:`PostProcess.apply`.
    Returns ``(masks [H, W, K], scores [K], class_ids [K])``."""
    settings = (settings or PostProcess()).replace(min_size=min_size, fill_holes=fill_holes)
    return settings.apply(r, image_shape)


def safe_name(name):
    """A file-name-safe form of an image id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "image"


def _nanmean(values):
    vals = np.asarray(values, np.float64)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def _checked_ids(dataset, image_ids, config):
    """The ids of ``image_ids`` whose image and masks pass
    :func:`mrcnn_nuclei.data.checks.check_dataset` (BadImagesError lists the bad ones unless
    ``config.SKIP_BAD_IMAGES``)."""
    from .data.checks import check_dataset

    if not hasattr(dataset, "check_image"):
        return image_ids
    view = check_dataset(dataset, config, image_ids=image_ids, what="evaluation dataset")
    if view is dataset:
        return image_ids
    good = {int(i) for i in view.image_ids}
    return [i for i in image_ids if int(i) in good]


def evaluate_dataset(model, dataset, image_ids=None, out_dir=None, overlays=False,
                     min_size=None, fill_holes=None, score_threshold=None, postprocess=None,
                     coco_backend="pycocotools", pannuke=True, default_tissue="all",
                     check_images=True, progress=False, verbose=1, cache_ground_truth=True):
    """Detect, post-process and score every image. Returns the summary dict.

    Args:
        model: a ``MaskRCNN`` in inference mode (its ``.postprocess`` settings, from a model
            folder, apply), a model folder path, or any callable
            ``image [H, W, C] uint8 -> {"masks": [H, W, N] bool, "scores": [N], ...}``.
        dataset: a prepared ``Dataset`` (``load_image``, ``load_mask``, ``image_info``).
        image_ids: internal image ids to evaluate (default all).
        out_dir: folder for per_image.csv, summary.json, predictions_coco.json, labels/,
            overlays/ (None: nothing written).
        overlays: also write TP/FP/FN outline PNGs (needs ``out_dir``).
        min_size, fill_holes, score_threshold: override the post-processing settings
            (``postprocess``, else the model's, else :class:`PostProcess` defaults).
        coco_backend: ``"pycocotools"`` or ``"numpy"`` (same numbers, faster).
        pannuke: also compute PanNuke bPQ/mPQ per tissue (``image_info["tissue"]``, else
            ``default_tissue``).
        check_images: check every image and its masks first
            (:func:`mrcnn_nuclei.data.checks.check_dataset`).
        progress: a tqdm bar over the images. verbose: 0 silent, 1 table, 2 one line per image.
        cache_ground_truth: reuse the ground-truth label images an earlier call decoded for the
            same dataset object and image (:func:`ground_truth`; the recipe scores the same ids
            at every curve point); False reads every mask again.
    Returns:
        dict with ``means`` (metric -> mean over images; nan images skipped), ``coco`` (AP,
        AP50, AP75), ``pannuke`` (``bpq``, ``mpq`` over ``dataset.num_classes - 1`` classes,
        ``per_tissue``; images without ground-truth nuclei skipped), ``totals`` (summed counts),
        ``n_images``, ``image_ids``, ``post_processing`` and ``per_image`` (one dict per image:
        ``image_id``, ``index``, ``tissue``, every metric, the counts, ``bpq``, ``mpq``,
        ``detect_seconds``).
    """
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if not ids:
        raise ValueError("image_ids is empty: nothing to evaluate (check --subset / --limit)")
    if isinstance(model, (str, os.PathLike)):
        from .modelfolder import load_model

        model = load_model(model)
    base = postprocess if postprocess is not None else getattr(model, "postprocess", None)
    settings = (base or PostProcess()).replace(min_size=min_size, fill_holes=fill_holes,
                                               score_threshold=score_threshold)
    detect, _ = as_detect_fn(model, settings)
    if check_images:
        ids = _checked_ids(dataset, ids, getattr(model, "config", None))
    if out_dir is not None:
        os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    n_classes = max(1, int(getattr(dataset, "num_classes", 2)) - 1)
    rows, gts, preds, pred_scores, coco_results = [], [], [], [], []
    t_start = time.perf_counter()
    for k, d in enumerate(_detect_labels(detect, dataset, ids, settings, progress)):
        image_id, image, pred, scores, class_ids = (d["image_id"], d["image"], d["label"],
                                                    d["scores"], d["class_ids"])
        info = dataset.image_info[image_id]
        gt, gt_class_ids = ground_truth(dataset, image_id, cache=cache_ground_truth)
        row = {"image_id": d["name"], "index": int(image_id),
               "tissue": str(info.get("tissue") or default_tissue)}
        row.update(metrics.evaluate_all(gt, pred))
        if pannuke:
            row.update(_pannuke_row(row, gt, pred, gt_class_ids, class_ids, n_classes))
        row["detect_seconds"] = round(d["seconds"], 4)
        rows.append(row)
        gts.append(gt.astype(export.label_dtype(gt)))
        preds.append(pred.astype(export.label_dtype(pred)))
        pred_scores.append(scores)
        if out_dir is not None:
            masks = metrics.label_to_masks(pred, n_instances=len(scores))
            coco_results.extend(export.coco_results(k + 1, masks, scores, class_ids))
            _write_image(out_dir, row["image_id"], image, gt, preds[-1], overlays)
        if verbose >= 2:
            print(f"[{k + 1}/{len(ids)}] {row['image_id']}: dsb={row['dsb']:.3f} "
                  f"aji={row['aji']:.3f} pq={row['pq']:.3f} gt={row['n_gt']} "
                  f"pred={row['n_pred']} ({d['seconds']:.2f}s detect)", flush=True)
    summary = _summary(rows, gts, preds, pred_scores, coco_backend, pannuke, n_classes, settings)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    if out_dir is not None:
        write_results(out_dir, summary, coco_results)
    if verbose:
        print(format_table(summary))
    return summary


def detect_images(model, dataset, image_ids, settings=None, progress=False):
    """The detection half of every loop: for each id, detect and post-process one image.

    model: as for :func:`evaluate_dataset` (a callable is used as is). settings: a
    :class:`PostProcess` (default: the model's, else the defaults).
    Yields dicts ``image_id`` (internal), ``name`` (file-safe source id), ``image``, ``result``
    (the raw detection dict), ``masks [H, W, K]``, ``scores [K]``, ``class_ids [K]`` (after
    post-processing) and ``seconds`` (detect time).
    """
    detect, own = as_detect_fn(model, settings)
    settings = settings or own or PostProcess()
    for image_id in _progress(list(image_ids), progress):
        image = dataset.load_image(image_id)
        t0 = time.perf_counter()
        r = detect(image)
        seconds = time.perf_counter() - t0
        masks, scores, class_ids = settings.apply(r, image.shape)
        yield {"image_id": image_id, "name": safe_name(dataset.image_info[image_id].get(
            "id", image_id)), "image": image, "result": r, "masks": masks, "scores": scores,
            "class_ids": class_ids, "seconds": seconds}


def _detect_labels(detect, dataset, image_ids, settings, progress=False):
    """:func:`detect_images` for the scoring loop: the post-processed prediction of each image as
    a label image (:func:`postprocess_label`) instead of an instance stack. Yields dicts
    ``image_id``, ``name``, ``image``, ``label [H, W]`` int32 (id ``k + 1`` <-> ``scores[k]``),
    ``scores [K]``, ``class_ids [K]`` and ``seconds`` (detect time)."""
    for image_id in _progress(list(image_ids), progress):
        image = dataset.load_image(image_id)
        t0 = time.perf_counter()
        r = detect(image)
        seconds = time.perf_counter() - t0
        label, scores, class_ids = postprocess_label(r, image.shape, settings)
        yield {"image_id": image_id, "name": safe_name(dataset.image_info[image_id].get(
            "id", image_id)), "image": image, "label": label, "scores": scores,
            "class_ids": class_ids, "seconds": seconds}


def postprocess_label(r, image_shape, settings=None):
    """The post-processed prediction of one detection dict as a label image.

    Equal to ``metrics.masks_to_label(settings.apply(r, image_shape)[0])`` with the kept scores
    and class ids (:meth:`PostProcess.apply`: score threshold, overlaps resolved by the package's
    rule, instances under ``max(min_size, 1)`` pixels dropped), but read from the detection's
    ``masks [H, W, N]`` in one scan, without the resolved, filtered and relabelled
    ``[H, W, N]`` copies (with ``fill_holes`` it runs :meth:`PostProcess.apply` itself).
    settings: a :class:`PostProcess` (default: the defaults).
    Returns ``(label [H, W] int32, scores [K] float64, class_ids [K] int64)``; label id
    ``k + 1`` is instance ``k``, ids ``1..K`` all present.
    """
    from .metrics.labels import _overlap_rank, _paint_ranked

    settings = settings or PostProcess()
    if settings.fill_holes:
        masks, scores, class_ids = settings.apply(r, image_shape)
        return metrics.masks_to_label(masks), scores, class_ids
    masks, scores, class_ids = settings.arrays(r, image_shape)
    n = masks.shape[-1]
    keep = np.ones(n, bool)
    if settings.score_threshold:
        keep = scores >= float(settings.score_threshold)
    m = masks if masks.dtype == bool else masks > 0
    label = np.zeros(m.shape[:2], np.int32)
    n_kept = int(keep.sum())
    if n_kept:
        # the rank among the kept channels equals their rank in the kept stack (ties: earlier
        # channel; area = the channel's own pixel count); dropped channels get -1 (left out)
        rank = np.where(keep, _overlap_rank(m, scores, settings.overlap), -1)
        _paint_ranked(m, rank, label, ids=np.cumsum(keep))
    area = np.bincount(label.ravel(), minlength=n_kept + 1)[1:]
    big = area >= max(int(settings.min_size), 1)
    lut = np.zeros(n_kept + 1, np.int32)
    lut[1:][big] = np.arange(1, int(big.sum()) + 1)
    return lut[label], scores[keep][big], class_ids[keep][big]


_GT_CACHE = weakref.WeakKeyDictionary()
#: Most bytes of ground-truth label images kept per dataset object (then no more are added).
GT_CACHE_BYTES = 512 * 2 ** 20


def _gt_signature(info):
    """What identifies an image's ground truth: its info entry, id, and the mask files' mtimes."""
    paths = info.get("mask_paths") or ()
    try:
        stamps = tuple(os.stat(p).st_mtime_ns for p in paths)
    except OSError:
        stamps = None
    return id(info), str(info.get("id")), tuple(paths), stamps


def _gt_store(dataset):
    try:
        return _GT_CACHE.setdefault(dataset, {"bytes": 0, "items": {}})
    except TypeError:  # not hashable or not weakly referenceable
        return None


def ground_truth(dataset, image_id, cache=True):
    """Ground truth of one image as a label image: ``(label [H, W] int32, class_ids [N])`` from
    ``dataset.load_mask`` (id ``k + 1`` = mask ``k``; overlaps by :func:`metrics.masks_to_label`).

    cache: keep the label image (in the smallest integer dtype) with the dataset object (weakly:
    dropped with the dataset; at most ``GT_CACHE_BYTES`` per dataset) and reuse it while the
    image's ``image_info`` entry and its mask files' modification times are unchanged, so
    repeated evaluations of the same ids decode the masks once. Datasets that cannot be weakly
    referenced or hashed are not cached.
    """
    info = dataset.image_info[image_id]
    store = _gt_store(dataset) if cache else None
    if store is not None:
        sig = _gt_signature(info)
        hit = store["items"].get(image_id)
        if hit is not None and hit[0] == sig:
            return hit[1].astype(np.int32), hit[2].copy()
    gt_masks, gt_class_ids = dataset.load_mask(image_id)
    gt = metrics.masks_to_label(gt_masks)
    if store is not None:
        small = gt.astype(export.label_dtype(gt))
        if store["bytes"] + small.nbytes <= GT_CACHE_BYTES:
            old = store["items"].get(image_id)
            store["bytes"] += small.nbytes - (old[1].nbytes if old is not None else 0)
            store["items"][image_id] = (sig, small, np.array(gt_class_ids))
    return gt, gt_class_ids


def _progress(ids, progress):
    if not progress:
        return ids
    from tqdm.auto import tqdm

    return tqdm(ids, desc="evaluate", unit="image")


def _pannuke_row(row, gt, pred, gt_class_ids, class_ids, n_classes):
    """Per-image PanNuke values: bPQ (PQ of all nuclei; nan without ground truth) and mPQ
    (nan-mean over classes of the per-class PQ, classes from the label ids)."""
    gt_ids = np.asarray(gt_class_ids, np.int64).ravel()
    if row["n_gt"] == 0:
        return {"bpq": float("nan"), "mpq": float("nan")}
    bpq = float(row["pq"])
    if n_classes == 1 and np.all(gt_ids == 1) and np.all(np.asarray(class_ids) == 1):
        return {"bpq": bpq, "mpq": bpq}  # one class, every instance in it: mPQ = bPQ
    gt_cls = np.concatenate([[0], gt_ids]).astype(np.int32)[gt]
    pred_cls = np.concatenate([[0], np.asarray(class_ids, np.int64)]).astype(np.int32)[pred]
    mpq = metrics.pannuke_mpq([(gt, gt_cls)], [(pred, pred_cls)], ["x"], n_classes)[0]
    return {"bpq": bpq, "mpq": float(mpq)}


def _summary(rows, gts, preds, pred_scores, coco_backend, pannuke, n_classes, settings):
    means = {m: _nanmean([row[m] for row in rows]) for m in METRICS}
    summary = {
        "n_images": len(rows), "means": means,
        "coco": metrics.coco_mask_ap(gts, preds, pred_scores, backend=coco_backend),
        "totals": {c: int(sum(row[c] for row in rows)) for c in COUNTS},
        "dsb_score_dataset": means["dsb"],
        "post_processing": {"resolve_overlaps": settings.overlap,
                            "min_size": int(settings.min_size),
                            "fill_holes": bool(settings.fill_holes),
                            "score_threshold": float(settings.score_threshold),
                            "mask_threshold": float(settings.mask_threshold)},
        "image_ids": [row["image_id"] for row in rows],
        "coco_image_ids": {str(k + 1): row["image_id"] for k, row in enumerate(rows)},
        "per_image": rows,
    }
    if pannuke:
        tissues = [row["tissue"] for row in rows]
        bpq, bpq_tissue = tissue_means(np.array([row["bpq"] for row in rows]), tissues)
        mpq, mpq_tissue = tissue_means(np.array([row["mpq"] for row in rows]), tissues)
        summary["pannuke"] = {"bpq": bpq, "mpq": mpq, "n_classes": n_classes,
                              "per_tissue": {t: {"bpq": bpq_tissue[t], "mpq": mpq_tissue[t],
                                                 "images": tissues.count(t)}
                                             for t in bpq_tissue}}
    return summary


# ------------------------------------------------------------------------------------ files
def _write_image(out_dir, name, image, gt, pred, overlays):
    export.save_label_tiff(os.path.join(out_dir, "labels", f"{name}.tif"), pred)
    if overlays:
        from .visualize import save_tp_fp_fn_overlay

        save_tp_fp_fn_overlay(image, gt, pred, os.path.join(out_dir, "overlays", f"{name}.png"))


def write_results(out_dir, summary, coco_results=()):
    """``per_image.csv`` (the rows of ``summary["per_image"]``), ``summary.json`` (the summary
    without the rows; NaN as null) and ``predictions_coco.json`` in ``out_dir``, atomically."""
    from .fileio import atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    rows = summary["per_image"]
    fields = ["image_id", "index"] + METRICS + COUNTS + ["detect_seconds"]
    lines = [",".join(fields)] + [",".join(_fmt(row[f]) for f in fields) for row in rows]
    atomic_write_text(os.path.join(out_dir, "per_image.csv"), "\n".join(lines) + "\n",
                      newline="")
    saved = {k: v for k, v in summary.items() if k != "per_image"}
    atomic_write_text(os.path.join(out_dir, "summary.json"),
                      json.dumps(_jsonable(saved), indent=2), newline="")
    export.save_coco_json(os.path.join(out_dir, "predictions_coco.json"), list(coco_results))


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
