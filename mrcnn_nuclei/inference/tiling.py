"""Tiled instance inference for images larger than the model input (1000x1000 tiles, slides).

:func:`tiled_detect` cuts the image into ``tile_size`` tiles overlapping by ``overlap`` pixels
(the last tile on each axis is shifted back to end at the border, so every tile has the same
size when the image is at least one tile large).  Each tile has a CORE: the tile minus half the
overlap on its interior sides (exactly: cores end halfway through the overlap with the next tile),
so the cores partition the image.  An instance found in a tile is kept only if the centroid of
its mask, in global coordinates, lies in that tile's core: every nucleus is therefore kept by
exactly one tile, and by the tile that sees it whole as long as ``overlap`` exceeds the largest
nucleus diameter (for very elongated or concave shapes use twice the diameter).  Kept instances
are pasted into one label image; within a tile higher scores go first, and a pasted instance never
overwrites pixels already labelled (earlier tiles / better instances win), so there are no
duplicates and no seams.

Memory is bounded by one tile: only the current tile's pixels and masks are held, and the image
can be anything that slices to a NumPy array (``np.ndarray``, ``np.memmap``, ``tifffile.memmap``,
zarr arrays).  The output label image can be a preallocated (memory-mapped) array via ``out``.

Typical use::

    labels = tiled_detect(lambda tile: model.detect([tile])[0], image, tile_size=512, overlap=96)
    labels = tiled_detect(lambda tile: tta_detect(model, tile), tifffile.memmap("region.tif"))
"""

from __future__ import annotations

import numpy as np

__all__ = ["tile_grid", "tiled_detect", "detect_tiled", "keep_in_core", "paste_kept",
           "labels_to_result"]


def tile_grid(length, tile_size, overlap):
    """Tiles along one axis: list of (start, stop, core_start, core_stop); cores partition 0..length."""
    length, tile_size, overlap = int(length), int(tile_size), int(overlap)
    if tile_size < 1 or not 0 <= overlap < tile_size:
        raise ValueError(f"tile_size={tile_size}, overlap={overlap}: need tile_size >= 1 and "
                         "0 <= overlap < tile_size")
    if length <= tile_size:
        return [(0, length, 0, length)]
    stride = tile_size - overlap
    starts = sorted(set(range(0, length - tile_size, stride)) | {length - tile_size})
    bounds = [0] + [(starts[i + 1] + starts[i] + tile_size) // 2
                    for i in range(len(starts) - 1)] + [length]
    return [(s, s + tile_size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def _instances(result, shape, where):
    """detect_fn output -> (ys, xs, ks) pixel coords per instance, scores [N]."""
    h, w = shape
    if isinstance(result, dict):
        if "masks" not in result:
            raise ValueError(f"{where}: detect_fn returned a dict without 'masks' [h, w, N]")
        masks = np.asarray(result["masks"])
        if masks.ndim != 3 or masks.shape[:2] != (h, w):
            raise ValueError(f"{where}: masks must be [{h}, {w}, N] (the tile size), got "
                             f"{masks.shape}")
        n = masks.shape[-1]
        scores = np.asarray(result.get("scores", np.ones(n)), np.float32).ravel()
        if len(scores) != n:
            raise ValueError(f"{where}: {len(scores)} scores for {n} masks")
        ys, xs, ks = np.nonzero(masks.astype(bool, copy=False))
        return ys, xs, ks, scores
    labels = np.asarray(result)
    if labels.shape != (h, w):
        raise ValueError(f"{where}: detect_fn must return a detect() dict or a label image "
                         f"[{h}, {w}], got shape {labels.shape}")
    ys, xs = np.nonzero(labels)
    ids, ks = np.unique(labels[ys, xs], return_inverse=True)
    return ys, xs, ks.ravel(), np.ones(len(ids), np.float32)


def keep_in_core(ys, xs, ks, scores, origin, core, min_area=1):
    """The keep rule of tiled inference, for one tile's instances (shared by :func:`tiled_detect`
    and the whole-slide runner :mod:`mrcnn_nuclei.slides`).

    ys, xs [P]: tile-local pixel coordinates of instance pixels; ks [P]: their instance index
    0..N-1; scores [N].  origin: (y0, x0) of the tile in global coordinates; core:
    (cy0, cy1, cx0, cx1), the tile's core in global coordinates.  An instance is kept when it has
    at least ``min_area`` pixels and the centroid of its pixel centres lies in the core.  Kept
    instances are ranked by descending score (stable) and each pixel goes to its best-ranked
    kept instance.  Returns (py, px, pr, kept): the kept pixels (tile-local, each once, sorted by
    row-major position), their rank pr in 0..K-1, and kept [K], the instance indices in rank order.
    """
    ys, xs, ks = np.asarray(ys), np.asarray(xs), np.asarray(ks)
    scores = np.asarray(scores, np.float32).ravel()
    n = len(scores)
    empty = np.zeros(0, np.int64)
    if n == 0 or len(ks) == 0:
        return empty, empty, empty, empty
    y0, x0 = origin
    cy0, cy1, cx0, cx1 = core
    area = np.bincount(ks, minlength=n)
    safe = np.maximum(area, 1)
    cy = np.bincount(ks, ys, minlength=n) / safe + y0
    cx = np.bincount(ks, xs, minlength=n) / safe + x0
    # centre of pixel (y, x) is (y + 0.5, x + 0.5): core test on pixel-centre coords
    keep = ((area >= max(1, min_area)) & (cy + 0.5 >= cy0) & (cy + 0.5 < cy1)
            & (cx + 0.5 >= cx0) & (cx + 0.5 < cx1))
    if not keep.any():
        return empty, empty, empty, empty
    rank = np.full(n, -1)
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    rank[kept] = np.arange(len(kept))
    sel = rank[ks] >= 0
    py, px, pr = ys[sel], xs[sel], rank[ks[sel]]
    width = int(px.max()) + 1
    flat = py.astype(np.int64) * width + px
    order = np.lexsort((pr, flat))
    first = np.r_[True, np.diff(flat[order]) > 0]
    order = order[first]
    return py[order], px[order], pr[order], kept


def paste_kept(region, py, px, pr, next_id):
    """Paste kept instances into ``region`` (the tile's window of the output label image, a
    NumPy array modified in place) without overwriting pixels already labelled: earlier tiles
    win.  py, px, pr: from :func:`keep_in_core`.  Ranks that keep at least one free pixel get
    consecutive ids ``next_id, next_id + 1, ...`` in rank order.  Returns (used, free): the ranks
    that were pasted (ascending) and a bool [P] marking which of the pixels were free.
    """
    free = region[py, px] == 0
    if not free.any():
        return np.zeros(0, np.int64), free
    pr_free = pr[free]
    used = np.unique(pr_free)
    new_ids = np.zeros(int(pr.max()) + 1, np.int64)
    new_ids[used] = next_id + np.arange(len(used))
    region[py[free], px[free]] = new_ids[pr_free]
    return used, free


def tiled_detect(detect_fn, image, tile_size=512, overlap=64, min_area=1, return_scores=False,
                 out=None):
    """Instance segmentation of a large image tile by tile -> label image [H, W] int32.

    detect_fn(tile [h, w(, C)]) returns a ``detect()``-style dict (``masks`` [h, w, N] bool,
    optional ``scores`` [N]) or a label image [h, w] int.  ``image``: [H, W] or [H, W, C], any
    array that slices to NumPy (memmaps welcome).  ``min_area``: instances with fewer pixels are
    ignored.  ``out``: optional preallocated zeroed [H, W] integer array to write into.
    Returns the label image (0 = background, 1..K), and with ``return_scores`` also the scores
    [K] float32 (``scores[k - 1]`` belongs to label k).
    """
    shape = tuple(image.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"image: expected [H, W] or [H, W, C], got shape {shape}")
    height, width = shape[:2]
    if out is None:
        out = np.zeros((height, width), np.int32)
    elif tuple(out.shape) != (height, width):
        raise ValueError(f"out: must be [{height}, {width}], got {tuple(out.shape)}")
    all_scores = []
    next_id = 1
    for (y0, y1, cy0, cy1) in tile_grid(height, tile_size, overlap):
        for (x0, x1, cx0, cx1) in tile_grid(width, tile_size, overlap):
            tile = np.asarray(image[y0:y1, x0:x1])
            where = f"tile y={y0}:{y1} x={x0}:{x1}"
            ys, xs, ks, scores = _instances(detect_fn(tile), (y1 - y0, x1 - x0), where)
            n = len(scores)
            if n == 0 or len(ks) == 0:
                continue
            py, px, pr, kept = keep_in_core(ys, xs, ks, scores, (y0, x0), (cy0, cy1, cx0, cx1),
                                            min_area=min_area)
            if len(kept) == 0:
                continue
            region = out[y0:y1, x0:x1]
            used, _ = paste_kept(region, py, px, pr, next_id)
            if len(used) == 0:
                continue
            out[y0:y1, x0:x1] = region
            next_id += len(used)
            all_scores.append(scores[kept[used]])
    if return_scores:
        scores = np.concatenate(all_scores) if all_scores else np.zeros(0, np.float32)
        return out, scores.astype(np.float32)
    return out


def labels_to_result(labels, scores, max_mask_bytes=None):
    """Label image [H, W] (1..K) and scores [K] -> a ``detect()`` dict: ``rois`` [K, 4] int32,
    ``class_ids`` [K] int32 (all 1: labels carry no class), ``scores`` [K] float32, ``masks``
    [H, W, K] bool, and ``labels`` itself.

    max_mask_bytes: raise :class:`~mrcnn_nuclei.inference.memory.DetectMemoryError` instead of
    building a mask stack of more than that many bytes (H * W * K).
    """
    from scipy import ndimage

    from .memory import DetectMemoryError

    labels = np.asarray(labels)
    h, w = labels.shape
    k = int(labels.max()) if labels.size else 0
    if max_mask_bytes is not None and float(h) * w * k > max_mask_bytes:
        raise DetectMemoryError(
            f"the tiled result has {k} nuclei; its mask stack [H, W, N] = {h}x{w}x{k} would take "
            f"{h * w * k / 1e9:.1f} GB, over DETECT_MEMORY_LIMIT_GB. Call "
            "mrcnn_nuclei.inference.tiling.tiled_detect yourself: it returns one label image "
            "[H, W] instead of a mask stack")
    rois = np.zeros((k, 4), np.int32)
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=k)):
        if sl is not None:
            rois[i] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    masks = np.zeros((h, w, k), bool)
    ys, xs = np.nonzero(labels)
    masks[ys, xs, labels[ys, xs] - 1] = True
    return {"rois": rois, "class_ids": np.ones(k, np.int32),
            "scores": np.asarray(scores, np.float32)[:k], "masks": masks,
            "labels": labels.astype(np.int32, copy=False)}


def detect_tiled(model, image, tile_sizes=(1024, 512, 256, 128), overlap=64):
    """``model.detect([image])[0]`` for an image too large for one pass (``Config.AUTO_TILE``):
    :func:`tiled_detect` with the largest of ``tile_sizes`` whose detect memory estimate fits
    ``DETECT_MEMORY_LIMIT_GB``, returned as a detect() dict plus ``labels`` (see
    :func:`labels_to_result`: overlaps resolved, one pixel per nucleus, class ids 1).
    """
    from .memory import DetectMemoryError, estimate_detect_memory, memory_limit_bytes

    config = model.config
    limit = memory_limit_bytes(config)
    image = np.asarray(image)
    channels = image.shape[2:]
    for tile in tile_sizes:
        probe = np.zeros((min(tile, image.shape[0]), min(tile, image.shape[1])) + channels,
                         image.dtype)
        molded = model.mold_inputs([probe])[0][0]
        if limit is None or estimate_detect_memory(config, molded.shape, probe.shape) <= limit:
            break
    else:
        raise DetectMemoryError(f"AUTO_TILE: even {tile_sizes[-1]} px tiles need more than "
                                "DETECT_MEMORY_LIMIT_GB allows; raise it")
    overlap = min(overlap, tile // 2)
    labels, scores = tiled_detect(lambda t: model.detect([t])[0], image, tile_size=tile,
                                  overlap=overlap, return_scores=True)
    result = labels_to_result(labels, scores, max_mask_bytes=limit)
    result["tile_size"], result["overlap"] = tile, overlap
    return result
