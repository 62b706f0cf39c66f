"""Time every metric on one 1000x1000 image with about 600 nuclei.

Ground truth: Voronoi cells of jittered seeds clipped to discs (touching, irregular nuclei).
Prediction: the same seeds moved by 1-3 pixels with other radii, 5% dropped, 2% extra blobs.

    python benchmarks/metrics_speed.py [--size 1000] [--repeat 3]
"""

import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mrcnn_nuclei import metrics as M  # noqa: E402


def voronoi_nuclei(seeds, radii, size):
    """Label image [size, size]: nearest seed's id where closer than that seed's radius."""
    marker = np.zeros((size, size), bool)
    ys, xs = seeds[:, 0], seeds[:, 1]
    marker[ys, xs] = True
    ids = np.zeros((size, size), np.int32)
    ids[ys, xs] = np.arange(1, len(seeds) + 1)
    dist, (iy, ix) = ndi.distance_transform_edt(~marker, return_indices=True)
    nearest = ids[iy, ix]
    r = np.concatenate([[0.0], radii])
    return np.where(dist <= r[nearest], nearest, 0).astype(np.int32)


def make_pair(size=1000, grid=25, seed=0):
    rng = np.random.default_rng(seed)
    step = size / grid
    gy, gx = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    seeds = np.stack([gy.ravel(), gx.ravel()], 1) * step + step / 2
    seeds = np.clip(seeds + rng.uniform(-step / 3, step / 3, seeds.shape), 0, size - 1).astype(int)
    radii = rng.uniform(9, 19, len(seeds))
    gt = voronoi_nuclei(seeds, radii, size)
    moved = np.clip(seeds + rng.integers(-3, 4, seeds.shape), 0, size - 1)
    keep = rng.random(len(seeds)) > 0.05
    extra = rng.integers(0, size, (int(0.02 * len(seeds)), 2))
    p_seeds = np.concatenate([moved[keep], extra])
    p_radii = np.concatenate([radii[keep] * rng.uniform(0.85, 1.15, keep.sum()),
                              rng.uniform(5, 10, len(extra))])
    pred = voronoi_nuclei(p_seeds, p_radii, size)
    return gt, pred


def class_maps(gt, pred, n_classes=5, seed=2):
    """PanNuke-style class maps: GT nucleus ``i`` has class ``(i - 1) % 5 + 1``; a prediction takes
    the class of the nucleus it overlaps most (1 if none), 10% of them then a random class."""
    rng = np.random.default_rng(seed)
    gt_cls = np.where(gt > 0, (gt - 1) % n_classes + 1, 0)
    c = M.Contingency(gt, pred)
    best = c.gt_ids[np.argmax(c.inter, axis=0)] if c.n_gt else np.ones(c.n_pred, np.int64)
    cls = np.where(c.inter.max(axis=0, initial=0) > 0, (best - 1) % n_classes + 1, 1)
    flip = rng.random(cls.size) < 0.1
    cls[flip] = rng.integers(1, n_classes + 1, flip.sum())
    lut = np.zeros(int(pred.max()) + 1, np.int64)
    lut[c.pred_ids] = cls
    return gt_cls, lut[pred]


def timed(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = ap.parse_args(argv)
    gt, pred = make_pair(args.size, grid=max(1, round(25 * args.size / 1000)))
    n_gt, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
    print(f"image {gt.shape[0]}x{gt.shape[1]}: {n_gt} GT nuclei, {n_pred} predicted")
    scores = np.random.default_rng(1).random(n_pred)
    tissues = ["bench"]
    gt_cls, pred_cls = class_maps(gt, pred)
    jobs = [
        ("contingency table", lambda: M.Contingency(gt, pred)),
        ("dsb_score", lambda: M.dsb_score(gt, pred)),
        ("aji", lambda: M.aji(gt, pred)),
        ("aji_plus", lambda: M.aji_plus(gt, pred)),
        ("panoptic_quality", lambda: M.panoptic_quality(gt, pred)),
        ("dice", lambda: M.dice(gt, pred)),
        ("matched_mean_iou", lambda: M.matched_mean_iou(gt, pred)),
        ("f1_detection", lambda: M.f1_detection(gt, pred)),
        ("pannuke_bpq", lambda: M.pannuke_bpq([gt], [pred], tissues)),
        ("pannuke_mpq (5 classes)", lambda: M.pannuke_mpq([(gt, gt_cls)], [(pred, pred_cls)],
                                                          tissues)),
        ("coco_mask_ap (numpy)", lambda: M.coco_mask_ap([gt], [pred], [scores],
                                                        backend="numpy")),
    ]
    total = 0.0
    results = {}
    for name, fn in jobs:
        t, out = timed(fn, args.repeat)
        results[name] = out
        if name != "contingency table":
            total += t
        shown = out if isinstance(out, float) else (
            tuple(round(v, 4) for v in out) if isinstance(out, tuple) and
            all(isinstance(v, float) for v in out) else "")
        if isinstance(out, dict):
            shown = {k: round(v, 4) for k, v in out.items()}
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            shown = round(out[0], 4)  # PanNuke: (overall, per tissue)
        if isinstance(shown, float):
            shown = round(shown, 4)
        print(f"{name:28s} {t * 1000:8.1f} ms   {shown}")
    print(f"{'TOTAL (each metric alone)':28s} {total * 1000:8.1f} ms")
    t, out = timed(lambda: M.coco_mask_ap([gt], [pred], [scores]), 1)
    print(f"{'coco_mask_ap (pycocotools)':28s} {t * 1000:8.1f} ms   "
          f"{ {k: round(v, 4) for k, v in out.items()} }  (reference; not in the total)")
    t, out = timed(lambda: M.evaluate_all(gt, pred), args.repeat)
    print(f"{'evaluate_all (one table)':28s} {t * 1000:8.1f} ms   dsb={out['dsb']:.4f} "
          f"aji={out['aji']:.4f} pq={out['pq']:.4f}")
    print(f"target: total < 1000 ms -> {'OK' if total < 1.0 else 'MISSED'}")
    return total


if __name__ == "__main__":
    main()
