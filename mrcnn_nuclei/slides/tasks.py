"""The work one Dask task does for one tile (runs on a worker).

:func:`process_tile` reads the tile from the slide, runs the (per-worker cached) segmenter, applies
the keep rule of :func:`mrcnn_nuclei.inference.tiling.keep_in_core` (an instance belongs to the
tile whose core holds its centroid) and measures the kept instances.  It returns a small dict
(kept instances as packed mask crops with their records, timings, the worker's peak memory):
nothing but the tile is held, so a worker's memory is bounded by the tile size and the model.
Pixels are not returned.

Tile dicts: ``index`` (position in the slide's row-major tile grid), ``box`` (y0, y1, x0, x1) and
``core`` (cy0, cy1, cx0, cx1) on the working grid.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import numpy as np

from ..inference.tiling import keep_in_core
from .measure import measure_instance
from .segmenters import get_segmenter

__all__ = ["process_tile", "pack_mask", "unpack_mask", "instance_pixels", "peak_rss_mb"]

_READERS = {}
_LOCK = threading.Lock()


def peak_rss_mb():
    """This process's peak resident memory so far, in MB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pack_mask(mask):
    """bool [h, w] -> (shape, packed bytes)."""
    return mask.shape, np.packbits(mask, axis=None)


def unpack_mask(shape, packed):
    h, w = shape
    return np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)


def _reader(reader):
    """The worker's open copy of ``reader`` (one per slide and grid, reused across tiles)."""
    key = (reader.path, reader.level, reader.downsample)
    with _LOCK:
        cached = _READERS.get(key)
        if cached is None:
            cached = _READERS[key] = reader
    return cached


def instance_pixels(py, px, pr, n):
    """Pixels sorted by rank -> per rank (ys, xs) arrays (list of n pairs)."""
    order = np.argsort(pr, kind="stable")
    py, px, pr = py[order], px[order], pr[order]
    cuts = np.searchsorted(pr, np.arange(n + 1))
    return [(py[cuts[r]:cuts[r + 1]], px[cuts[r]:cuts[r + 1]]) for r in range(n)]


def process_tile(tile, job):
    """Segment one tile.  job: dict with ``reader`` (SlideReader), ``spec`` (segmenter spec),
    ``min_area``.  Returns a dict: index, box, ``instances`` (list of dicts: bbox (y0, x0, y1, x1)
    on the working grid, mask (shape, packed), score, class_id, record), ``times`` (read,
    load (the segmenter, first tile of a worker only), detect, measure seconds),
    ``peak_rss_mb``, ``worker`` (host:pid)."""
    t0 = time.perf_counter()
    reader = _reader(job["reader"])
    y0, y1, x0, x1 = tile["box"]
    rgb = reader.read(y0, x0, y1 - y0, x1 - x0)
    t1 = time.perf_counter()
    segment = get_segmenter(job["spec"])  # loads the model on a worker's first tile only
    t_load = time.perf_counter() - t1
    t1 += t_load
    ys, xs, ks, scores, class_ids = segment(rgb)
    t2 = time.perf_counter()
    py, px, pr, kept = keep_in_core(ys, xs, ks, scores, (y0, x0), tile["core"],
                                    min_area=job.get("min_area", 1))
    del ys, xs, ks
    instances = []
    if len(kept):
        from ..stain import hematoxylin_channel

        hema = hematoxylin_channel(rgb)
        for r, (iy, ix) in enumerate(instance_pixels(py, px, pr, len(kept))):
            if len(iy) == 0:  # every pixel went to better-ranked instances
                continue
            by0, by1, bx0, bx1 = iy.min(), iy.max() + 1, ix.min(), ix.max() + 1
            mask = np.zeros((by1 - by0, bx1 - bx0), bool)
            mask[iy - by0, ix - bx0] = True
            rec = measure_instance(mask, y0 + by0, x0 + bx0, rgb[by0:by1, bx0:bx1],
                                   hema[by0:by1, bx0:bx1], reader.downsample, reader.base_mpp,
                                   job.get("tolerance", 0.5))
            k = kept[r]
            instances.append({"bbox": (int(y0 + by0), int(x0 + bx0), int(y0 + by1),
                                       int(x0 + bx1)),
                              "mask": pack_mask(mask), "score": float(scores[k]),
                              "class_id": int(class_ids[k]) if k < len(class_ids) else 1,
                              "record": rec})
    t3 = time.perf_counter()
    return {"index": int(tile["index"]), "box": tuple(int(v) for v in tile["box"]),
            "instances": instances,
            "times": {"read": t1 - t_load - t0, "load": t_load, "detect": t2 - t1,
                      "measure": t3 - t2},
            "peak_rss_mb": peak_rss_mb(), "worker": f"{os.uname().nodename}:{os.getpid()}"}
