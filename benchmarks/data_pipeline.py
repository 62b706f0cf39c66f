"""Training data pipeline throughput: per-stage cost and batches/second with 0, 1, 2 workers.

Builds NucleusConfig-style batches (512x512 crops, IMAGE_MIN_SCALE 2, default augmentation, RPN
targets, 56x56 mini-masks) from the shared DSB train split (or ``--dataset synthetic``).

    python benchmarks/data_pipeline.py                          # DSB, batch 2, 12 batches
    python benchmarks/data_pipeline.py --batch-size 1 --batches 20 --processes --cache
    python benchmarks/data_pipeline.py --dataset synthetic --stages 0

Output: (1) a per-stage table in ms/image for the loader's path and for a straightforward
"baseline" path (whole-image resize, one bool mask per channel through albumentations, dense
IoU matrix for the RPN targets), (2) batches/second for: 0 workers (``loader[i]`` in the main
thread), Keras's synchronous path (workers=1), a Keras thread pool (workers=2) and, with
``--processes``, Keras process pools (use_multiprocessing=True, 1 and 2 processes), and with
``--cache`` a loader with ``cache=True`` in a later epoch (images already decoded).

Target: the loader must build batches at least 5x faster than the model trains on them, so it is
never the bottleneck.  Pass the measured training step time of the same batch size
(``benchmarks/train_speed.py`` prints it as "step s") with ``--train-step-s``; each row then shows
its speed relative to the model and whether it meets the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrcnn_nuclei.boxes import box_refinement, compute_overlaps, get_anchors  # noqa: E402
from mrcnn_nuclei.config import NucleusConfig  # noqa: E402
from mrcnn_nuclei.data import augment as G  # noqa: E402
from mrcnn_nuclei.data import image_ops as IO  # noqa: E402
from mrcnn_nuclei.data import loader as L  # noqa: E402
from mrcnn_nuclei.data.targets import build_rpn_targets  # noqa: E402


#: the loader must be at least this many times faster than a training step (issue target)
TARGET_RATIO = 5.0


def make_config(batch_size):
    class BenchConfig(NucleusConfig):
        IMAGES_PER_GPU = batch_size
    return BenchConfig()


def make_dataset(kind, root, count):
    if kind == "synthetic":
        from mrcnn_nuclei.datasets import SyntheticNucleiDataset
        ds = SyntheticNucleiDataset()
        ds.load(count, seed=0, height=256, width=320, colour="mixed", max_nuclei=60)
    else:
        from mrcnn_nuclei.datasets import DSBDataset
        ds = DSBDataset()
        ds.load(root, subset="train")
    ds.prepare()
    return ds


# ------------------------------------------------------------------------------------ stages
def _dense_rpn_targets(anchors, class_ids, boxes, config, rng):
    """Baseline: Matterport-style targets on the dense [A, G] IoU matrix."""
    n = len(anchors)
    match = np.zeros(n, np.int32)
    bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32)
    if len(boxes) == 0:
        match[:] = -1
    else:
        ov = compute_overlaps(anchors, boxes)
        arg = ov.argmax(axis=1)
        best = ov[np.arange(n), arg]
        match[best < 0.3] = -1
        match[ov.argmax(axis=0)] = 1
        match[best >= 0.7] = 1
    pos = np.flatnonzero(match == 1)
    half = config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    if len(pos) > half:
        match[rng.choice(pos, len(pos) - half, replace=False)] = 0
    neg = np.flatnonzero(match == -1)
    extra = len(neg) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - (match == 1).sum())
    if extra > 0:
        match[rng.choice(neg, extra, replace=False)] = 0
    pos = np.flatnonzero(match == 1)
    if len(pos):
        bbox[:len(pos)] = box_refinement(anchors[pos], boxes[arg[pos]]) / config.RPN_BBOX_STD_DEV
    return match, bbox


def stage_times(ds, config, ids, aug, baseline):
    """ms per image for each stage, on the given image ids."""
    names = ["load", "resize+crop", "augment", "boxes", "rpn targets", "mini-masks+mold"]
    acc = dict.fromkeys(names, 0.0)
    anchors = get_anchors(config, config.IMAGE_SHAPE)
    for image_id in ids:  # benchmark loop over sample images
        rng = np.random.default_rng(int(image_id))
        t0 = time.perf_counter()
        if baseline:
            image, mask, class_ids = L._load(ds, config, image_id)
        else:
            image, packed, class_ids, n = L._load_packed(ds, config, image_id)
        t1 = time.perf_counter()
        if baseline:
            image, window, scale, padding, crop = IO.resize_image(
                image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
                min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE, rng=rng)
            mask = IO.resize_mask(mask, scale, padding, crop)
        else:
            (image, window, scale, padding, crop), _ = L._resize_and_crop(image, config, rng)
            packed = IO.resize_mask(packed, scale, padding, crop)
        t2 = time.perf_counter()
        if baseline:
            if aug is not None:
                image, mask, kept = G.apply_augmentation(image, mask, aug, rng=rng)
                class_ids = class_ids[kept]
        else:
            if aug is not None:
                image, packed = G.augment_packed(image, packed, aug, rng=rng)
            channels = np.flatnonzero(IO.packed_nonempty(packed, n))
            class_ids = class_ids[channels]
        t3 = time.perf_counter()
        bbox = IO.extract_bboxes(mask) if baseline else IO.packed_bboxes(packed, channels)
        t4 = time.perf_counter()
        if baseline:
            _dense_rpn_targets(anchors.astype(np.float64), class_ids, bbox, config, rng)
        else:
            build_rpn_targets(anchors, class_ids, bbox, config, rng=rng, image_shape=image.shape)
        t5 = time.perf_counter()
        if baseline:
            IO.minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
        else:
            IO.packed_minimize_mask(bbox, packed, channels, config.MINI_MASK_SHAPE)
        IO.mold_image(image, config)
        t6 = time.perf_counter()
        for name, dt in zip(names, np.diff([t0, t1, t2, t3, t4, t5, t6])):
            acc[name] += dt
    return {k: 1000 * v / len(ids) for k, v in acc.items()}


# ------------------------------------------------------------------------------------ throughput
def throughput(ds, config, aug, batches, workers, processes, seed, cache=False):
    """batches/second over ``batches`` batches (after one warm-up batch).  With ``cache`` the
    timed batches are built once before timing (a later epoch of a cached loader)."""
    loader = L.TrainingLoader(ds, config, augmentation=aug, seed=seed, workers=max(workers, 1),
                              use_multiprocessing=processes, max_queue_size=10, cache=cache)
    batches = min(batches, len(loader) - 1)
    if cache:
        for i in range(batches + 1):
            loader[i]
    if workers == 0:
        loader[len(loader) - 1]  # warm-up (anchors cache, imports)
        t0 = time.perf_counter()
        for i in range(batches):
            loader[i]
        return batches / (time.perf_counter() - t0)
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(loader, shuffle=False)
    adapter.on_epoch_begin()
    it = adapter.get_numpy_iterator()
    next(it)  # warm-up: pool start-up is not counted
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t0
    adapter.on_epoch_end()
    return batches / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["dsb", "synthetic"], default="dsb")
    p.add_argument("--root", default=os.environ.get(
        "MRCNN_NUCLEI_SHARED_DSB",
        str(Path(os.environ.get("MRCNN_NUCLEI_SHARED", REPO.parent / "shared"))
            / "data" / "dsb2018_stage1_train")))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    p.add_argument("--stages", type=int, default=24, help="images for the per-stage table (0: skip)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated thread-worker counts")
    p.add_argument("--processes", action="store_true", help="also time process pools (1, 2)")
    p.add_argument("--cache", action="store_true", help="also time cache=True (later epochs)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-step-s", type=float, default=None,
                   help="seconds per training step of the model at this batch size (from "
                        "benchmarks/train_speed.py): rows then show loader speed / model speed "
                        f"against the {TARGET_RATIO:g}x target")
    args = p.parse_args(argv)
    if args.train_step_s is not None and args.train_step_s <= 0:
        p.error("--train-step-s must be positive")

    config = make_config(args.batch_size)
    ds = make_dataset(args.dataset, args.root, count=max(64, args.batch_size * (args.batches + 2)))
    aug = None if args.no_augment else G.default_augmentation()
    print(f"dataset {args.dataset}: {len(ds.image_ids)} images; batch {args.batch_size}; "
          f"crop {config.IMAGE_MIN_DIM}, min scale {config.IMAGE_MIN_SCALE}; "
          f"{len(get_anchors(config, config.IMAGE_SHAPE))} anchors; "
          f"augmentation {'off' if aug is None else 'default'}; cpus {os.cpu_count()}, "
          f"load avg {os.getloadavg()[0]:.1f}")

    if args.stages:
        ids = np.random.default_rng(args.seed).choice(ds.image_ids, min(args.stages, len(ds.image_ids)),
                                                      replace=False)
        for image_id in ids:  # read the files once: both paths then find them in the page cache
            ds.load_image(image_id)
            ds.load_mask(image_id)
        new = stage_times(ds, config, ids, aug, baseline=False)
        G._local.copies = {}
        pack = G._pack_safe
        G._pack_safe = lambda a: False  # baseline: one uint8 mask per channel
        old = stage_times(ds, config, ids, aug, baseline=True)
        G._pack_safe = pack
        G._local.copies = {}
        print(f"\nper-stage cost, ms/image (mean over {len(ids)} images)")
        print(f"{'stage':18} {'baseline':>9} {'loader':>9}")
        for k in new:
            print(f"{k:18} {old[k]:9.1f} {new[k]:9.1f}")
        print(f"{'total':18} {sum(old.values()):9.1f} {sum(new.values()):9.1f}")

    rows = []
    for w in [int(v) for v in args.workers.split(",") if v.strip()]:
        label = {0: "0 workers (loader[i], main thread)",
                 1: "1 worker (Keras, synchronous)"}.get(w, f"{w} workers (Keras threads)")
        rows.append((label, throughput(ds, config, aug, args.batches, w, False, args.seed)))
    if args.cache:
        for w in (0, 2):
            rows.append((f"{w} workers{' (threads)' if w else ''}, cache=True, later epoch",
                         throughput(ds, config, aug, args.batches, w, False, args.seed, cache=True)))
    if args.processes:
        for w in (1, 2):
            rows.append((f"{w} process{'es' if w > 1 else ''} (use_multiprocessing)",
                         throughput(ds, config, aug, args.batches, w, True, args.seed)))
    print(f"\nthroughput, batch size {args.batch_size}, {args.batches} batches each")
    step = args.train_step_s
    if step is None:
        print(f"{'setting':40} {'batches/s':>10} {'images/s':>10}")
        for label, bps in rows:
            print(f"{label:40} {bps:10.2f} {bps * args.batch_size:10.2f}")
        print(f"(pass --train-step-s with the model's training step time to check the "
              f"{TARGET_RATIO:g}x target)")
        return rows
    print(f"model: {step:.3f} s per training step = {1 / step:.2f} batches/s; target: loader "
          f">= {TARGET_RATIO:g}x that = {TARGET_RATIO / step:.2f} batches/s")
    print(f"{'setting':40} {'batches/s':>10} {'images/s':>10} {'x model':>8} {'target':>7}")
    for label, bps in rows:
        ratio = bps * step
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"{label:40} {bps:10.2f} {bps * args.batch_size:10.2f} {ratio:8.1f} {verdict:>7}")
    return rows


if __name__ == "__main__":
    main()
