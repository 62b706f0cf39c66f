"""detect() and training-step time per Keras backend and option.

Options: ``tf`` (TensorFlow, no XLA), ``tf-xla`` (TensorFlow with ``jit_compile=True`` for the
inference and the training function: tf2xla rejects the graph's data-dependent shapes, so these
rows report that error), ``jax`` (always XLA); each in float32 and ``bf16``
(Config.MIXED_PRECISION = "mixed_bfloat16"); training steps on one device and on two
(Config.DISTRIBUTE = "data_parallel", GPU_COUNT = 2; on a CPU: two logical TF CPUs / two forced
JAX host devices, which share the same cores).  Configs: ``nucleus`` (ResNet-50 nucleus config,
512x512) and ``recipe`` (mrcnn_nuclei.recipes.DSBScratchConfig, ResNet-18 at 256x256).

Every measurement runs in its own subprocess (the backend is fixed at import).  Reported: the
first call (tracing/compiling) and the median of ``--repeats`` further calls, in seconds.
Random weights (timing only); the detect image is a generated nuclei image of the config's size.

    python benchmarks/backends.py                                    # everything (slow on a CPU)
    python benchmarks/backends.py --configs recipe --options tf jax --repeats 3 --what detect
    python benchmarks/backends.py --configs nucleus --what train --options tf jax \
        --precisions f32 bf16 --devices 1 --repeats 3                # ResNet-50 training steps

The first call is a cold compile: a JAX persistent compilation cache in the environment
(JAX_COMPILATION_CACHE_DIR) is not passed to the measuring subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(name, precision, devices):
    from mrcnn_nuclei.config import NucleusConfig
    from mrcnn_nuclei.recipes import DSBScratchConfig

    base = NucleusConfig if name == "nucleus" else DSBScratchConfig

    class Bench(base):
        NAME = "bench"
        IMAGES_PER_GPU = 1
        GPU_COUNT = devices
        DISTRIBUTE = "data_parallel" if devices > 1 else "none"
        MIXED_PRECISION = "mixed_bfloat16" if precision == "bf16" else None
        IMAGE_RESIZE_MODE = "square"
        LEARNING_RATE_WARMUP_STEPS = 0
        LEARNING_RATE_DECAY = "none"

    return Bench()


def measure(what, name, option, precision, devices, repeats):
    """Runs inside the subprocess; returns {"first": s, "median": s, ...}."""
    import numpy as np

    from mrcnn_nuclei.datasets import SyntheticNucleiDataset
    from mrcnn_nuclei.model import MaskRCNN

    cfg = _config(name, precision, devices)
    size = int(cfg.IMAGE_MAX_DIM)
    ds = SyntheticNucleiDataset()
    ds.load(max(2, cfg.BATCH_SIZE), seed=0, height=size, width=size)
    ds.prepare()
    times = []
    if what == "detect":
        model = MaskRCNN("inference", cfg, "/tmp/bench_logs")
        if option == "tf-xla":
            model.keras_model.jit_compile = True  # tf2xla rejects the graph (README)
        image = ds.load_image(0)
        for _ in range(repeats + 1):
            t = time.perf_counter()
            model.detect([image])
            times.append(time.perf_counter() - t)
    else:
        from mrcnn_nuclei.data.loader import TrainingLoader

        model = MaskRCNN("training", cfg, "/tmp/bench_logs")
        model.set_trainable(".*")
        model.compile(0.001, 0.9)
        if option == "tf-xla":
            model.keras_model.compile(optimizer=model.keras_model.optimizer, jit_compile=True)
        batch = TrainingLoader(ds, cfg, seed=1)[0]
        for _ in range(repeats + 1):
            t = time.perf_counter()
            model.keras_model.train_on_batch(batch)
            times.append(time.perf_counter() - t)
    return {"first": times[0], "median": statistics.median(times[1:]), "repeats": repeats}


def run_one(what, name, option, precision, devices, repeats, timeout):
    env = dict(os.environ, KERAS_BACKEND="jax" if option == "jax" else "tensorflow",
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # first call = compile, not a cache read
    if option == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu" if not os.environ.get("JAX_PLATFORMS") else
                       os.environ["JAX_PLATFORMS"])
        if devices > 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                f" --xla_force_host_platform_device_count={devices}").strip()
    args = [sys.executable, __file__, "--child", json.dumps(
        [what, name, option, precision, devices, repeats])]
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout}s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}


def child(spec):
    what, name, option, precision, devices, repeats = json.loads(spec)
    if option != "jax" and devices > 1:
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        if not tf.config.list_physical_devices("GPU"):
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
    sys.path.insert(0, str(ROOT))
    print("RESULT " + json.dumps(measure(what, name, option, precision, devices, repeats)),
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["nucleus", "recipe"])
    p.add_argument("--options", nargs="+", default=["tf", "tf-xla", "jax"])
    p.add_argument("--precisions", nargs="+", default=["f32", "bf16"])
    p.add_argument("--what", nargs="+", default=["detect", "train"])
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2],
                   help="device counts for the training step (detect always uses 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child)
    print("| config | what | option | precision | devices | first call s | median s |")
    print("|---|---|---|---|---|---|---|")
    for name in a.configs:
        for what in a.what:
            for option in a.options:
                for precision in a.precisions:
                    for devices in (a.devices if what == "train" else [1]):
                        r = run_one(what, name, option, precision, devices, a.repeats, a.timeout)
                        if "error" in r:
                            cells = ["-", "error: " + r["error"]]
                        else:
                            cells = [f"{r['first']:.2f}", f"{r['median']:.3f}"]
                        print(f"| {name} | {what} | {option} | {precision} | {devices} | "
                              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
