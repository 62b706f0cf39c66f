"""Seconds per training step and peak memory of Mask R-CNN on 512x512 crops.

Each (backbone, batch size) runs in its own child process so that its peak resident memory
(VmHWM from /proc/self/status, or ru_maxrss) is its own.  Batches come from the project's
TrainingLoader (nucleus training preset: 512 crops, mini-masks) over generated nuclei or the DSB
folder, are built before timing, and the step time is the median of ``--steps`` calls of
``train_on_batch`` after two warm-up steps (the first traces the graph; its time is printed too).
All layers are trainable (the most expensive stage).

    python benchmarks/train_speed.py                               # resnet50, batch 1 and 2
    python benchmarks/train_speed.py --batches 1 --backbones resnet101 --dataset /path/to/dsb2018
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))


def peak_rss_mb():
    """Peak resident set size of this process in MiB (VmHWM; ru_maxrss as a fallback)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(backbone, batch, steps, size, dataset):
    """Run in the child: returns a dict of timings (s) and peak memory (MiB)."""
    import keras
    import numpy as np

    from mrcnn_nuclei.config import NucleusConfig
    from mrcnn_nuclei.data.loader import TrainingLoader
    from mrcnn_nuclei.model import LAYER_REGEX, MaskRCNN

    cfg = type("TrainSpeedConfig", (NucleusConfig,), dict(
        NAME="train_speed", BACKBONE=backbone, IMAGES_PER_GPU=batch, IMAGE_MIN_DIM=size,
        IMAGE_MAX_DIM=size, SEED=0))()
    if dataset == "synthetic":
        from mrcnn_nuclei.datasets import SyntheticNucleiDataset

        ds = SyntheticNucleiDataset().load(4 * batch, seed=21, height=size, width=size,
                                           max_nuclei=60)
    else:
        from mrcnn_nuclei.datasets import DSBDataset

        ds = DSBDataset().load(dataset, subset="train")
    ds.prepare()
    keras.utils.set_random_seed(0)
    rss_before_model = peak_rss_mb()
    model = MaskRCNN("training", cfg, model_dir=os.path.join(_REPO, "logs", "bench"))
    model.set_trainable(LAYER_REGEX["all"])
    model.compile(cfg.LEARNING_RATE, cfg.LEARNING_MOMENTUM)
    loader = TrainingLoader(ds, cfg, shuffle=True, seed=0)
    batches = [loader[i % len(loader)] for i in range(min(len(loader), 4))]

    start = time.perf_counter()
    model.keras_model.train_on_batch(batches[0])
    first = time.perf_counter() - start
    model.keras_model.train_on_batch(batches[1 % len(batches)])
    times, losses = [], []
    for i in range(steps):
        start = time.perf_counter()
        out = model.keras_model.train_on_batch(batches[i % len(batches)], return_dict=True)
        times.append(time.perf_counter() - start)
        losses.append(float(out["loss"]))
    assert np.all(np.isfinite(losses)), losses
    return dict(backbone=backbone, batch=batch, size=size, first=first,
                step=statistics.median(times), per_image=statistics.median(times) / batch,
                peak_mb=peak_rss_mb(), before_model_mb=rss_before_model, loss=losses[-1])


def main(argv=None):
    """Parse options; run each configuration in a child process and print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2", help="batch sizes (IMAGES_PER_GPU)")
    p.add_argument("--backbones", default="resnet50")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--size", type=int, default=512, help="crop size")
    p.add_argument("--dataset", default="synthetic", help="'synthetic' or the DSB2018 folder")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        backbone, batch = args.child.split(":")
        result = measure(backbone, int(batch), args.steps, args.size, args.dataset)
        print("RESULT " + json.dumps(result), flush=True)
        return result

    print(f"training step time at {args.size}x{args.size}, all layers trainable, median of "
          f"{args.steps} steps; {os.cpu_count()} CPU threads")
    print(f"{'backbone':10} {'batch':>5} {'first s':>8} {'step s':>7} {'s/image':>8} "
          f"{'peak RSS MiB':>13}")
    rows = []
    for backbone in args.backbones.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            cmd = [sys.executable, __file__, "--child", f"{backbone}:{batch}", "--steps",
                   str(args.steps), "--size", str(args.size), "--dataset", args.dataset]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{backbone:10} {batch:5d} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[-1][len("RESULT "):])
            rows.append(r)
            print(f"{backbone:10} {batch:5d} {r['first']:8.1f} {r['step']:7.2f} "
                  f"{r['per_image']:8.2f} {r['peak_mb']:13.0f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
