"""Seconds per training step of the CPU recipe (DSBScratchConfig) under Config overrides.

Each variant runs in its own child process (a fresh graph and thread pool) on the same real DSB
training batches (the recipe's loader: 256 px crops of x2-upsampled images, 2 per step); the
figure is the median of ``--steps`` ``train_on_batch`` calls after two warm-up calls. Use it to
price a recipe change in steps per budget before training with it.

    python benchmarks/recipe_step.py                                   # the recipe as it is
    python benchmarks/recipe_step.py --variant MASK_HEAD_CHANNELS=128 \\
        --variant MASK_HEAD_CHANNELS=64 --variant "MASK_POOL_SIZE=28 MASK_SHAPE=[56,56]"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(_REPO / "benchmarks"))

DEFAULT_DSB = str(_REPO.parent / "shared" / "data" / "dsb2018_stage1_train")


def measure(overrides, steps, dataset):
    """In the child: median step seconds of the recipe with ``overrides`` (dict)."""
    import keras
    import numpy as np

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.model import LAYER_REGEX, MaskRCNN
    from mrcnn_nuclei.recipes import DSBScratchConfig, cached_loader, config_with

    cfg = config_with(DSBScratchConfig, SEED=0, **overrides)
    ds = DSBDataset().load(dataset, subset="train")
    ds.prepare()
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = MaskRCNN("training", cfg, model_dir=tmp)
        model.set_trainable(LAYER_REGEX["all"])
        model.compile(cfg.LEARNING_RATE, cfg.LEARNING_MOMENTUM)
        loader = cached_loader(ds, cfg, shuffle=True)  # seeded by cfg.SEED
        batches = [loader[i] for i in range(4)]
        t0 = time.perf_counter()
        model.keras_model.train_on_batch(batches[0])
        first = time.perf_counter() - t0
        model.keras_model.train_on_batch(batches[1])
        times, losses = [], []
        for i in range(steps):
            t0 = time.perf_counter()
            out = model.keras_model.train_on_batch(batches[i % 4], return_dict=True)
            times.append(time.perf_counter() - t0)
            losses.append(float(out["loss"]))
    if not np.all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite losses {losses}")
    return {"first": first, "step": statistics.median(times),
            "params": int(model.keras_model.count_params())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], metavar="'NAME=VALUE ...'",
                   help="Config overrides of one variant (repeatable); the recipe itself is "
                        "always measured first")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (median)")
    p.add_argument("--dataset", default=DEFAULT_DSB)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from train_dsb import parse_overrides

    if args.child is not None:
        print("RESULT " + json.dumps(measure(json.loads(args.child), args.steps, args.dataset)))
        return None
    rows = []
    for text in [""] + args.variant:
        overrides = parse_overrides(text.split())
        cmd = [sys.executable, __file__, "--child", json.dumps(overrides), "--steps",
               str(args.steps), "--dataset", args.dataset]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            raise SystemExit(f"variant {text or 'recipe'!r} failed:\n{out.stderr[-3000:]}")
        r = json.loads(lines[-1][7:])
        rows.append((text or "recipe", r))
        base = rows[0][1]["step"]
        print(f"{text or 'recipe':50s} step {r['step']:6.2f} s  ({base / r['step']:4.2f}x steps "
              f"per budget)  first {r['first']:6.1f} s  params {r['params'] / 1e6:5.1f} M",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
