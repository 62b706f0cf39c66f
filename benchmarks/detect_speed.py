"""detect() latency against the backbone's own forward time.

For each backbone and image size: the first detect() call (includes tracing), the median of
``--repeats`` further calls, the inference graph alone (``keras_model.predict_on_batch`` on the
molded image: detect() minus molding/unmolding in NumPy), and the forward time of a keras.Model cut
from the same model's input to the ResNet outputs C2..C5 (the inputs of fpn_c2p2..fpn_c5p5) and to
the FPN levels P2..P6.  The overhead ratio ``(detect - backbone) / backbone`` shows the cost of
everything after the backbone (the issue's target: under 0.5 at 512x512 with ResNet-50).

    python benchmarks/detect_speed.py                       # 256, 512, 1000 x resnet50, resnet101
    python benchmarks/detect_speed.py --sizes 512 --backbones resnet50 --repeats 5

The model is randomly initialised unless --weights is given; with random weights the number of
detections is arbitrary, so it is printed (and --min-confidence / --max-instances fix the load).
The input is a generated nuclei image of the requested size; images are molded with pad64 and no
upscaling (IMAGE_MIN_SCALE = 0), so 1000x1000 runs at 1024x1024.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_config(backbone, size, min_confidence=None, max_instances=None, rois=None):
    """Nucleus inference config at ``size`` (pad64, no upscaling) with ``backbone``."""
    from mrcnn_nuclei.config import NucleusInferenceConfig

    attrs = dict(NAME="bench", BACKBONE=backbone, IMAGE_MIN_SCALE=0, IMAGE_MIN_DIM=size,
                 IMAGE_MAX_DIM=max(64, -(-size // 64) * 64))
    if rois is not None:
        attrs["POST_NMS_ROIS_INFERENCE"] = int(rois)
    if min_confidence is not None:
        attrs["DETECTION_MIN_CONFIDENCE"] = float(min_confidence)
    if max_instances is not None:
        attrs["DETECTION_MAX_INSTANCES"] = int(max_instances)
    return type("BenchConfig", (NucleusInferenceConfig,), attrs)()


def backbone_models(keras_model):
    """(ResNet C2..C5 model, backbone + FPN P2..P6 model) cut from an inference keras_model."""
    import keras

    image = keras_model.inputs[0]
    c_levels = [keras_model.get_layer(f"fpn_c{i}p{i}").input for i in (2, 3, 4, 5)]
    p_levels = [keras_model.get_layer(f"fpn_p{i}").output for i in (2, 3, 4, 5, 6)]
    return keras.Model(image, c_levels), keras.Model(image, p_levels)


def bench_one(backbone, size, repeats, weights=None, min_confidence=None, max_instances=None,
              rois=None):
    """Timings in seconds for one backbone and image size (dict)."""
    import keras

    from mrcnn_nuclei.datasets import SyntheticNucleiDataset
    from mrcnn_nuclei.model import MaskRCNN

    config = make_config(backbone, size, min_confidence, max_instances, rois)
    keras.utils.set_random_seed(0)
    model = MaskRCNN("inference", config, model_dir=os.path.join("logs", "bench"))
    if weights:
        model.load_weights(weights, by_name=True)
    ds = SyntheticNucleiDataset().load(1, seed=11, height=size, width=size, max_nuclei=60)
    ds.prepare()
    image = ds.load_image(0)

    start = time.perf_counter()
    result = model.detect([image])[0]
    first = time.perf_counter() - start

    molded, metas, _ = model.mold_inputs([image])
    x = np.stack(molded).astype(np.float32)
    meta = metas.astype(np.float32)
    c_model, p_model = backbone_models(model.keras_model)
    calls = {"detect": lambda: model.detect([image]),
             "graph": lambda: model.keras_model.predict_on_batch([x, meta]),
             "resnet": lambda: c_model.predict_on_batch(x),
             "fpn": lambda: p_model.predict_on_batch(x)}
    for fn in calls.values():  # warm up (traces the cut models)
        fn()
    # Interleaved rounds: on a shared CPU, load changes hit every measurement alike.
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            times[key].append(_median_time(fn, 1))
    detect, graph, resnet, fpn = (statistics.median(times[k]) for k in calls)
    return dict(backbone=backbone, size=size, molded=x.shape[1], detections=len(result["scores"]),
                rois=int(config.POST_NMS_ROIS_INFERENCE),
                first=first, detect=detect, graph=graph, resnet=resnet, fpn=fpn,
                overhead=(detect - resnet) / resnet, graph_overhead=(graph - resnet) / resnet)


def main(argv=None):
    """Parse options, run every (backbone, size) and print a table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256,512,1000", help="comma-separated square sizes")
    p.add_argument("--backbones", default="resnet50,resnet101")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--weights", default=None, help="weights file to load (default random)")
    p.add_argument("--min-confidence", type=float, default=None,
                   help="DETECTION_MIN_CONFIDENCE (nucleus preset: 0)")
    p.add_argument("--max-instances", type=int, default=None,
                   help="DETECTION_MAX_INSTANCES (nucleus preset: 400)")
    p.add_argument("--rois", type=int, default=None,
                   help="POST_NMS_ROIS_INFERENCE (nucleus preset: 2000, Matterport default 1000)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backbones = args.backbones.split(",")
    print(f"detect() latency, median of {args.repeats} (first call separately), CPU threads: "
          f"{os.cpu_count()}, POST_NMS_ROIS_INFERENCE: "
          f"{args.rois or make_config('resnet50', 256).POST_NMS_ROIS_INFERENCE}")
    header = (f"{'backbone':10} {'size':>5} {'molded':>6} {'dets':>5} {'first s':>8} "
              f"{'detect s':>9} {'graph s':>8} {'resnet s':>9} {'+fpn s':>7} "
              f"{'overhead':>9} {'graph ovh':>9}")
    print(header)
    rows = []
    for backbone in backbones:
        for size in sizes:
            r = bench_one(backbone, size, args.repeats, args.weights, args.min_confidence,
                          args.max_instances, args.rois)
            rows.append(r)
            print(f"{r['backbone']:10} {r['size']:5d} {r['molded']:6d} {r['detections']:5d} "
                  f"{r['first']:8.2f} {r['detect']:9.3f} {r['graph']:8.3f} {r['resnet']:9.3f} "
                  f"{r['fpn']:7.3f} {r['overhead']:9.2f} {r['graph_overhead']:9.2f}", flush=True)
    print("overhead = (detect - resnet) / resnet; graph ovh = (graph - resnet) / resnet "
          "(graph = the inference keras model alone, without NumPy molding/unmolding)")
    return rows


if __name__ == "__main__":
    main()
