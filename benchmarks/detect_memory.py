"""Peak memory of one ``MaskRCNN.detect`` call, to calibrate
:func:`mrcnn_nuclei.inference.memory.estimate_detect_memory`.

Each size runs in a fresh process (peak RSS is per process): build the inference model
(random weights, NucleusInferenceConfig unless --backbone), read the RSS, run detect() on one
noise image of SIZE x SIZE, read the peak RSS (ru_maxrss).  Prints one line per size:
size, detections, measured peak increase (GB), the estimate's variable part (GB).

    python benchmarks/detect_memory.py 256 512 1024
"""

import argparse
import json
import os
import resource
import subprocess
import sys


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(size, backbone, dmi, post_nms):
    import numpy as np

    from mrcnn_nuclei.config import NucleusInferenceConfig
    from mrcnn_nuclei.inference import memory
    from mrcnn_nuclei.model import MaskRCNN

    class C(NucleusInferenceConfig):
        BACKBONE = backbone
        DETECT_MEMORY_LIMIT_GB = None
        DETECTION_MAX_INSTANCES = dmi or NucleusInferenceConfig.DETECTION_MAX_INSTANCES
        POST_NMS_ROIS_INFERENCE = post_nms or NucleusInferenceConfig.POST_NMS_ROIS_INFERENCE

    config = C()
    model = MaskRCNN("inference", config, model_dir="/tmp/detect_memory_logs")
    # random weights: make every ROI a confident nucleus so that all detection slots fill
    layer = model.keras_model.get_layer("mrcnn_class_logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 0, np.r_[0.0, 5.0].astype(np.float32)])
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    before = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = model.detect([image])[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    molded = model.mold_inputs([image])[0][0].shape
    parts = memory.estimate_detect_memory(config, molded, image.shape, parts=True)
    print(json.dumps({"size": size, "dmi": config.DETECTION_MAX_INSTANCES,
                      "post_nms": config.POST_NMS_ROIS_INFERENCE, "detections": int(len(r["scores"])),
                      "rss_before_gb": before / 1e9, "peak_before_gb": peak_before / 1e9,
                      "increase_gb": (peak - before) / 1e9,
                      "estimate_gb": {k: v / 1e9 for k, v in parts.items()}}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sizes", nargs="*", type=int, default=[256, 512, 1024])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--dmi", type=int, default=0, help="DETECTION_MAX_INSTANCES (0: preset's)")
    p.add_argument("--post-nms", type=int, default=0, help="POST_NMS_ROIS_INFERENCE (0: preset's)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.backbone, a.dmi, a.post_nms)
    for size in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--backbone",
                              a.backbone, "--dmi", str(a.dmi), "--post-nms", str(a.post_nms)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        print(line[-1] if line else out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
