"""Detections cached once, post-processing swept many ways without re-running the network.

:func:`cache_detections` runs a model's soft detection (``detect_soft``: mask probabilities)
over a dataset's images and writes one compressed ``<image id>.npz`` per image into a folder:

    shape [2]          image height, width
    rois [N, 4]        int32 boxes as detect returns them; scores [N] float32; class_ids [N] int32
    crop_boxes [N, 4]  int32 (y1, x1, y2, x2) of the pixels where the soft mask is > 0 or the hard
                       0.5 mask is set (the soft masks are 0 outside them)
    soft [P]           float32 soft-mask values of every crop, flattened in C order, one after the
                       other (``P = sum of crop areas``)
    hard [ceil(P/8)]   np.packbits of ``masks`` (detect's own 0.5 masks) over the same pixels
    gt [H, W]          ground-truth label image (``metrics.masks_to_label`` of the dataset masks)
    image_id, group    the dataset's id string and ``image_info["group"]`` (or "")
    config             JSON of the detection settings that shaped the cache
                       (DETECTION_MIN_CONFIDENCE, DETECTION_MAX_INSTANCES, RESIZE_SEMANTICS, ...)

:func:`sweep` then scores every combination of mask threshold, score threshold and minimum size
(DSB score, AJI, PQ, F1 and the COCO mask AP): the label image of each setting is painted from
the cached crops with the package's one overlap rule and gives exactly what
:meth:`mrcnn_nuclei.modelfolder.PostProcess.apply` gives on ``detect_soft`` masks thresholded at
that value (at 0.5: on detect's own masks, as ``PostProcess.detect`` uses), so a row equals
:func:`mrcnn_nuclei.evaluation.evaluate_dataset` with those settings.

Scores below the cached model's ``DETECTION_MIN_CONFIDENCE`` were never kept by the graph: to
sweep lower score thresholds, cache with a model loaded with a lower one
(``load_model(folder, DETECTION_MIN_CONFIDENCE=0.3)``; detections above it are unchanged as long
as ``DETECTION_MAX_INSTANCES`` is not reached, which the cache records per image).
"""

from __future__ import annotations

import glob
import json
import math
import os
import time

import numpy as np

from .metrics import coco_mask_ap, evaluate_all, masks_to_label

__all__ = ["cache_detections", "ensure_cache", "model_key", "cache_entry", "save_cached", "load_cached", "load_cache",
           "cached_soft_masks", "cached_detection", "sweep_image", "sweep", "best_setting",
           "format_sweep", "MASK_THRESHOLDS", "SCORE_THRESHOLDS", "MIN_SIZES", "SWEEP_METRICS"]

MASK_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SCORE_THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZES = (0, 10, 20, 40)
#: Per-image means reported by :func:`sweep` (keys of :func:`mrcnn_nuclei.metrics.evaluate_all`).
SWEEP_METRICS = ("dsb", "aji", "pq", "f1")
_CONFIG_KEYS = ("NAME", "DETECTION_MIN_CONFIDENCE", "DETECTION_MAX_INSTANCES",
                "DETECTION_NMS_THRESHOLD", "RESIZE_SEMANTICS", "IMAGE_RESIZE_MODE",
                "IMAGE_MIN_SCALE", "IMAGE_MAX_DIM", "IMAGE_MIN_DIM")


# ------------------------------------------------------------------------------ cache files
def cache_entry(result, gt, image_id="", group="", config=None):
    """The cache record of one image: ``result`` a ``detect_soft`` dict (``rois``, ``scores``,
    ``class_ids``, ``masks [H, W, N]`` bool, ``soft_masks [H, W, N]`` float), ``gt`` the
    ``[H, W]`` ground-truth label image. Returns a dict of arrays (see the module docstring)."""
    from .data.image_ops import extract_bboxes

    soft = np.asarray(result["soft_masks"], np.float32)
    hard = np.asarray(result["masks"], bool)
    if soft.shape != hard.shape or soft.ndim != 3:
        raise ValueError(f"soft_masks {soft.shape} and masks {hard.shape} must be the same "
                         "[H, W, N]: pass a detect_soft result")
    n = soft.shape[-1]
    boxes = extract_bboxes((soft > 0) | hard).astype(np.int32).reshape(n, 4)
    vals, bits = [], []
    for k, (y1, x1, y2, x2) in enumerate(boxes):  # one crop per detection
        vals.append(soft[y1:y2, x1:x2, k].ravel())
        bits.append(hard[y1:y2, x1:x2, k].ravel())
    values = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    hard_flat = np.concatenate(bits) if bits else np.zeros(0, bool)
    return {"shape": np.array(soft.shape[:2], np.int64),
            "rois": np.asarray(result["rois"], np.int32).reshape(n, 4),
            "scores": np.asarray(result["scores"], np.float32).ravel(),
            "class_ids": np.asarray(result["class_ids"], np.int32).ravel(),
            "crop_boxes": boxes, "soft": values, "hard": np.packbits(hard_flat),
            "gt": np.asarray(gt), "image_id": str(image_id), "group": str(group or ""),
            "config": json.dumps(config or {})}


def save_cached(path, entry):
    """Write one cache record as a compressed ``.npz``, atomically."""
    from .fileio import atomic_write

    arrays = {k: v for k, v in entry.items() if not k.startswith("_") and k != "path"}

    def write(f):
        np.savez_compressed(f, **arrays)

    atomic_write(path, write)
    return path


def load_cached(path):
    """One cache record (dict; ``image_id``, ``group`` as str, ``config`` as a dict)."""
    with np.load(path, allow_pickle=False) as z:
        entry = {k: z[k] for k in z.files}
    for k in ("image_id", "group"):
        entry[k] = str(entry[k])
    entry["config"] = json.loads(str(entry["config"]))
    entry["path"] = str(path)
    return entry


def load_cache(folder, image_ids=None):
    """The records of a cache folder, sorted by file name, or those of ``image_ids`` (dataset
    id strings) in that order; FileNotFoundError naming what is missing."""
    from .evaluation import safe_name

    if image_ids is None:
        paths = sorted(glob.glob(os.path.join(folder, "*.npz")))
        if not paths:
            raise FileNotFoundError(f"no cached detections (*.npz) in {folder}: run "
                                    "cache_detections(model, dataset, folder) first")
    else:
        paths = [os.path.join(folder, safe_name(i) + ".npz") for i in image_ids]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) not cached in {folder} (first: "
                                    f"{missing[0]}); run cache_detections for them")
    return [load_cached(p) for p in paths]


def _config_summary(model):
    config = getattr(model, "config", None)
    out = {k: getattr(config, k) for k in _CONFIG_KEYS if hasattr(config, k)}
    out["source"] = str(getattr(model, "source", "") or "")
    return json.loads(json.dumps(out, default=str))


def model_key(model_folder, **config_overrides):
    """What identifies the detections of a model folder: its weights file (absolute path, size,
    modification time), a hash of its config.json and the config overrides."""
    import hashlib

    from .modelfolder import CONFIG_NAME, WEIGHTS_NAME

    folder = os.path.abspath(os.fspath(model_folder))
    weights = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{folder} is not a model folder: no {WEIGHTS_NAME} in it")
    st = os.stat(weights)
    config = os.path.join(folder, CONFIG_NAME)
    digest = None
    if os.path.exists(config):
        with open(config, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"weights": weights, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "config_sha256": digest,
            "overrides": json.loads(json.dumps(config_overrides, default=str))}


def _read_manifest(folder):
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _check_key(folder, key, manifest):
    old = manifest.get("key")
    if key is not None and old is not None and old != key:
        raise ValueError(f"{folder} holds detections of another model or settings ({old}) than "
                         f"{key}: use another cache folder or overwrite it (overwrite=True, "
                         "--recache)")


def cache_detections(model, dataset, folder, image_ids=None, overwrite=False, progress=False,
                     key=None):
    """Run ``model.detect_soft`` on each image and write ``folder/<image id>.npz``.

    model: a MaskRCNN in inference mode (or anything with ``detect_soft``). dataset: a prepared
    Dataset with masks (the ground truth is cached too). image_ids: internal ids (default all).
    overwrite: False skips images already cached (a stopped run resumes). key: what identifies
    the model (:func:`model_key`); a folder cached under another key raises ValueError unless
    ``overwrite``. Returns the list of paths (one per id, in order) and writes
    ``folder/manifest.json`` (key, detection config, timings, and the ids whose detections
    filled DETECTION_MAX_INSTANCES: there a lower DETECTION_MIN_CONFIDENCE may have pushed out
    detections).
    """
    from .evaluation import safe_name
    from .fileio import atomic_write_text

    if not hasattr(model, "detect_soft"):
        raise TypeError(f"cache_detections needs a model with detect_soft (soft masks); "
                        f"{type(model).__name__} has none")
    os.makedirs(folder, exist_ok=True)
    old = {} if overwrite else _read_manifest(folder)
    _check_key(folder, key, old)
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    config = _config_summary(model)
    cap = config.get("DETECTION_MAX_INSTANCES")
    paths, seconds, full = [], {}, []
    iterator = ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ids, desc="cache detections", unit="image")
    for image_id in iterator:
        info = dataset.image_info[image_id]
        name = str(info.get("id", image_id))
        path = os.path.join(folder, safe_name(name) + ".npz")
        paths.append(path)
        if os.path.exists(path) and not overwrite:
            continue
        image = dataset.load_image(image_id)
        t0 = time.perf_counter()
        r = model.detect_soft([image])[0]
        seconds[name] = round(time.perf_counter() - t0, 3)
        if cap and len(r["scores"]) >= int(cap):
            full.append(name)
        gt = masks_to_label(dataset.load_mask(image_id)[0])
        save_cached(path, cache_entry(r, gt, name, info.get("group") or "", config))
    detect_seconds = dict(old.get("detect_seconds", {}), **seconds)
    atomic_write_text(os.path.join(folder, "manifest.json"), json.dumps({
        "key": key if key is not None else old.get("key"), "config": config,
        "detect_seconds": detect_seconds,
        "filled_detection_max_instances": sorted(set(old.get(
            "filled_detection_max_instances", [])) | set(full))}, indent=2))
    return paths


def ensure_cache(model_folder, dataset, folder, image_ids=None, overwrite=False, progress=False,
                 **config_overrides):
    """Cached detections of a model folder for ``image_ids``, running the model only for images
    not cached yet (the model is loaded only then). config_overrides: upper-case Config
    attributes for :func:`mrcnn_nuclei.modelfolder.load_model`, e.g. a lower
    ``DETECTION_MIN_CONFIDENCE``. Returns ``(paths, manifest dict)``."""
    from .evaluation import safe_name

    key = model_key(model_folder, **config_overrides)
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if not overwrite:
        _check_key(folder, key, _read_manifest(folder))
    names = [str(dataset.image_info[i].get("id", i)) for i in ids]
    todo = [i for i, n in zip(ids, names) if overwrite
            or not os.path.exists(os.path.join(folder, safe_name(n) + ".npz"))]
    if todo or not _read_manifest(folder):
        from .modelfolder import load_model

        model = load_model(model_folder, **config_overrides)
        cache_detections(model, dataset, folder, todo, overwrite=overwrite, progress=progress,
                         key=key)
    paths = [os.path.join(folder, safe_name(n) + ".npz") for n in names]
    return paths, _read_manifest(folder)


def _crop_pixels(entry):
    """(flat pixel index [P] int64, detection [P] int64) of the cached crops, in storage order
    (memoised in the record)."""
    if "_pixels" in entry:
        return entry["_pixels"]
    w = int(entry["shape"][1])
    boxes = np.asarray(entry["crop_boxes"], np.int64).reshape(-1, 4)
    bw = boxes[:, 3] - boxes[:, 1]
    sizes = (boxes[:, 2] - boxes[:, 0]) * bw
    det = np.repeat(np.arange(boxes.shape[0]), sizes)
    start = np.cumsum(sizes) - sizes
    local = np.arange(det.size) - start[det]
    width = np.maximum(bw, 1)[det]
    flat = (boxes[det, 0] + local // width) * w + boxes[det, 1] + local % width
    entry["_pixels"] = (flat, det)
    return flat, det


def _hard(entry):
    return np.unpackbits(entry["hard"], count=entry["soft"].size).astype(bool)


def cached_soft_masks(entry):
    """The soft masks ``[H, W, N]`` float32 of a cache record (0 outside the crops)."""
    h, w = (int(v) for v in entry["shape"])
    n = entry["scores"].size
    out = np.zeros((h * w, n), np.float32)
    flat, det = _crop_pixels(entry)
    out[flat, det] = entry["soft"]
    return out.reshape(h, w, n)


def cached_detection(entry, mask_threshold=0.5):
    """A Matterport-style detection dict from a cache record: ``masks`` at ``mask_threshold``
    (0.5: detect's own masks), ``soft_masks``, ``rois``, ``scores``, ``class_ids``."""
    soft = cached_soft_masks(entry)
    h, w, n = soft.shape
    if float(mask_threshold) == 0.5:
        masks = np.zeros((h * w, n), bool)
        flat, det = _crop_pixels(entry)
        masks[flat, det] = _hard(entry)
        masks = masks.reshape(h, w, n)
    else:
        masks = soft >= float(mask_threshold)
    return {"rois": entry["rois"], "scores": entry["scores"], "class_ids": entry["class_ids"],
            "masks": masks, "soft_masks": soft}


# -------------------------------------------------------------------------------- the sweep
def _rank(key):
    """Rank [N]: higher key wins a contested pixel, ties to the earlier detection (the rule of
    metrics.masks_to_label)."""
    n = key.size
    order = np.lexsort((-np.arange(n), key))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def sweep_image(entry, mask_thresholds=MASK_THRESHOLDS, score_thresholds=SCORE_THRESHOLDS,
                min_sizes=MIN_SIZES, overlap="score"):
    """Post-processed label images of one cached image for every setting.

    Yields ``((mask_threshold, score_threshold, min_size), label [H, W] int32, scores [K])``:
    what ``PostProcess(mask_threshold=, score_threshold=, min_size=, overlap=).apply`` keeps,
    as a label image with ids ``1..K`` in detection order (``scores[k - 1]`` for id ``k``), the
    form :func:`mrcnn_nuclei.evaluation.evaluate_dataset` scores.
    """
    if overlap not in ("score", "area"):
        raise ValueError(f"overlap={overlap!r}: use 'score' or 'area'")
    h, w = (int(v) for v in entry["shape"])
    scores32 = entry["scores"]
    scores = scores32.astype(np.float64)
    n = scores.size
    flat, det = _crop_pixels(entry)
    soft = entry["soft"]
    if "_hard" not in entry:
        entry["_hard"] = _hard(entry)
    hard = entry["_hard"]
    base_order = None
    if overlap == "score":  # pixel entries by pixel, then by rank: the last of a pixel wins
        if "_score_order" not in entry:
            entry["_score_order"] = np.lexsort((_rank(scores)[det], flat))
        base_order = entry["_score_order"]
    for t in mask_thresholds:
        inside = hard if float(t) == 0.5 else soft >= float(t)
        for s in score_thresholds:
            kept = scores >= float(s) if float(s) else np.ones(n, bool)
            sel = inside & kept[det]
            if overlap == "score":
                order = base_order[sel[base_order]]
            else:  # the larger mask (after the score filter) wins
                area = np.bincount(det[sel], minlength=n).astype(np.float64)
                idx = np.flatnonzero(sel)
                order = idx[np.lexsort((_rank(area)[det[idx]], flat[idx]))]
            f, d = flat[order], det[order]
            last = np.ones(f.size, bool)
            last[:-1] = f[1:] != f[:-1]
            f, d = f[last], d[last]
            area = np.bincount(d, minlength=n)
            for m in min_sizes:
                keep = area >= max(int(m), 1)
                new_id = np.cumsum(keep) * keep  # ids 1..K in detection order
                label = np.zeros(h * w, np.int32)
                label[f] = new_id[d]
                yield (float(t), float(s), int(m)), label.reshape(h, w), scores32[keep]


def sweep(entries, mask_thresholds=MASK_THRESHOLDS, score_thresholds=SCORE_THRESHOLDS,
          min_sizes=MIN_SIZES, overlap="score", ap=True, progress=False):
    """Score every post-processing setting on cached detections.

    entries: cache records (:func:`load_cache`) or a cache folder. ap: also the COCO mask AP of
    every setting (NumPy backend; keeps each setting's label images of all images in memory
    one (mask, score) threshold pair at a time).
    Returns ``{"rows": [...], "n_images": N}``; a row: ``mask_threshold, score_threshold,
    min_size``, the image means of :data:`SWEEP_METRICS`, ``n_pred`` (total) and with ``ap``
    ``AP, AP50, AP75``.
    """
    if isinstance(entries, (str, os.PathLike)):
        entries = load_cache(entries)
    entries = list(entries)
    if not entries:
        raise ValueError("sweep: no cached images")
    min_sizes = tuple(int(m) for m in min_sizes)
    rows = []
    pairs = [(float(t), float(s)) for t in mask_thresholds for s in score_thresholds]
    iterator = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc="sweep", unit="setting")
    for t, s in iterator:
        per = {m: {"values": [], "preds": [], "scores": [], "n_pred": 0} for m in min_sizes}
        gts = []
        for e in entries:
            gts.append(e["gt"])
            for (_, _, m), label, sc in sweep_image(e, (t,), (s,), min_sizes, overlap):
                r = evaluate_all(e["gt"], label)
                acc = per[m]
                acc["values"].append([r[k] for k in SWEEP_METRICS])
                acc["n_pred"] += int(sc.size)
                if ap:
                    acc["preds"].append(label)
                    acc["scores"].append(sc.astype(np.float64))
        for m in min_sizes:
            acc = per[m]
            vals = np.asarray(acc["values"], np.float64)
            row = {"mask_threshold": t, "score_threshold": s, "min_size": m}
            for j, k in enumerate(SWEEP_METRICS):
                col = vals[:, j]
                col = col[~np.isnan(col)]
                row[k] = float(col.mean()) if col.size else float("nan")
            row["n_pred"] = acc["n_pred"]
            if ap:
                row.update(coco_mask_ap(gts, acc["preds"], acc["scores"], backend="numpy"))
            rows.append(row)
    return {"rows": rows, "n_images": len(entries), "overlap": overlap}


def best_setting(rows, key="dsb", min_score_threshold=None):
    """The row of highest ``key`` (ties: the first, i.e. the lowest thresholds in sweep order);
    rows with ``score_threshold < min_score_threshold`` are skipped."""
    cands = [r for r in rows if min_score_threshold is None
             or r["score_threshold"] >= float(min_score_threshold) - 1e-12]
    cands = [r for r in cands if not math.isnan(r[key])]
    if not cands:
        raise ValueError(f"best_setting: no row with a {key} value"
                         + (f" and score_threshold >= {min_score_threshold}"
                            if min_score_threshold is not None else ""))
    return max(cands, key=lambda r: r[key])


def format_sweep(result, key="dsb", top=None):
    """The sweep as a text table, best ``key`` first (``top`` rows, default all)."""
    rows = sorted(result["rows"], key=lambda r: -r[key] if not math.isnan(r[key]) else math.inf)
    if top:
        rows = rows[:top]
    has_ap = rows and "AP" in rows[0]
    head = f"{'mask_t':>7}{'score_t':>8}{'min_px':>7}" + "".join(
        f"{k:>8}" for k in SWEEP_METRICS) + (f"{'AP':>8}{'AP50':>8}" if has_ap else "") + \
        f"{'n_pred':>8}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['mask_threshold']:>7.2f}{r['score_threshold']:>8.2f}"
                     f"{r['min_size']:>7d}" + "".join(f"{r[k]:>8.4f}" for k in SWEEP_METRICS)
                     + (f"{r['AP']:>8.4f}{r['AP50']:>8.4f}" if has_ap else "")
                     + f"{r['n_pred']:>8d}")
    return "\n".join(lines)
