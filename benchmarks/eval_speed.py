"""Where the recipe's evaluation spends its time, per DSB image size group.

Evaluates the from-scratch recipe's inference model (``recipes.inference_twin`` of
``DSBScratchConfig``, random weights from ``--seed``, ``DETECTION_MIN_CONFIDENCE = 0`` so that
detect returns up to ``DETECTION_MAX_INSTANCES`` = 400 instances, as a trained model does on
crowded images) on DSB val ids with ``recipes.evaluate_model`` - the call the recipe makes at every
curve point - ``--passes`` times, and splits the time of each image into phases:

    load_image   dataset.load_image
    load_gt      dataset.load_mask (PNG decoding) + the ground-truth label image
                 (evaluation.ground_truth: from its cache after the first pass)
    mold         model.mold_inputs (resize x2, pad64, minus MEAN_PIXEL)
    network      the inference graph (inference.detect.run_graph)
    unmold       model.unmold_detections (boxes, masks pasted at the original size)
    postprocess  PostProcess.apply (overlaps resolved, small/empty masks dropped), or
                 evaluation.postprocess_label (the same, straight to the label image)
    pred_label   the prediction's label image (metrics.masks_to_label outside the above)
    metrics      metrics.evaluate_all (DSB, AJI, AJI+, PQ, ...)
    coco         the set-level COCO mask AP (once per pass, spread over the images)
    other        the rest of the pass (checks, bookkeeping)

It prints seconds per image by size group (``image_groups.tsv``) for every pass, and the pass
totals. Phases are timed by wrapping the functions the evaluation calls; the per-phase sums
therefore include the wrappers' own cost (microseconds).

    python benchmarks/eval_speed.py                          # 2 ids per size group, 2 passes
    python benchmarks/eval_speed.py --per-group 0 --passes 2 # all 68 val ids
    python benchmarks/eval_speed.py --groups 1024x1024_gray,603x1272_gray --per-group 0

Prefix with ``nice -n 10`` on a shared machine. The figures vary with the machine's load; compare
runs made in the same conditions.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DSB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                           "data", "dsb2018_stage1_train")
PHASES = ["load_image", "load_gt", "mold", "network", "unmold", "postprocess", "pred_label",
          "metrics", "coco", "other"]


class PhaseTimer:
    """Seconds per (image, phase); ``current`` is the image being evaluated."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.current = None
        self.depth = 0

    def wrap(self, fn, phase, sets_current=False):
        def timed(*args, **kwargs):
            if sets_current:
                self.current = args[0]
            if self.depth:  # nested call (e.g. a label image inside postprocess): parent's time
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[(self.current, phase)] += time.perf_counter() - t0
                self.depth -= 1
        return timed


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def build_model(seed, model_dir):
    """The recipe's inference model with random weights from ``seed``, confidence cut 0."""
    import keras

    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.recipes import DSBScratchConfig, config_with, inference_twin

    keras.utils.set_random_seed(seed)
    config = inference_twin(config_with(DSBScratchConfig, DETECTION_MIN_CONFIDENCE=0.0))
    return MaskRCNN("inference", config, model_dir=model_dir)


def pick_ids(dataset, groups, wanted_groups, per_group):
    """Internal ids of the val images, ``per_group`` per size group (0 = all)."""
    by_group = collections.defaultdict(list)
    for image_id in dataset.image_ids:
        g = groups.get(dataset.image_info[image_id]["id"], "unknown")
        if wanted_groups and g not in wanted_groups:
            continue
        if per_group and len(by_group[g]) >= per_group:
            continue
        by_group[g].append(int(image_id))
    return [i for g in sorted(by_group) for i in by_group[g]]


def timed_pass(model, dataset, ids, timer):
    """One ``recipes.evaluate_model`` pass with every phase wrapped. Returns (result, seconds)."""
    from mrcnn_nuclei import metrics, modelfolder
    from mrcnn_nuclei import evaluation as E
    from mrcnn_nuclei.inference import detect as D
    from mrcnn_nuclei.recipes import evaluate_model

    timer.current = None
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(patched(dataset, "load_image",
                                    timer.wrap(dataset.load_image, "load_image", True)))
        stack.enter_context(patched(dataset, "load_mask",
                                    timer.wrap(dataset.load_mask, "load_gt")))
        if hasattr(E, "ground_truth"):  # masks decoded (or taken from the cache) + label image
            stack.enter_context(patched(E, "ground_truth", timer.wrap(E.ground_truth, "load_gt")))
        if hasattr(E, "postprocess_label"):  # post-processing straight to the label image
            stack.enter_context(patched(E, "postprocess_label",
                                        timer.wrap(E.postprocess_label, "postprocess")))
        stack.enter_context(patched(model, "mold_inputs",
                                    timer.wrap(model.mold_inputs, "mold")))
        stack.enter_context(patched(model, "unmold_detections",
                                    timer.wrap(model.unmold_detections, "unmold")))
        stack.enter_context(patched(D, "run_graph", timer.wrap(D.run_graph, "network")))
        stack.enter_context(patched(modelfolder.PostProcess, "apply",
                                    timer.wrap(modelfolder.PostProcess.apply, "postprocess")))
        stack.enter_context(patched(metrics, "masks_to_label",
                                    timer.wrap(metrics.masks_to_label, "pred_label")))
        stack.enter_context(patched(metrics, "evaluate_all",
                                    timer.wrap(metrics.evaluate_all, "metrics")))
        stack.enter_context(patched(metrics, "coco_mask_ap",
                                    timer.wrap(metrics.coco_mask_ap, "coco")))
        t0 = time.perf_counter()
        result = evaluate_model(model, dataset, ids)
        return result, time.perf_counter() - t0


def report(dataset, groups, ids, timer, seconds):
    """Lines of the per-group table (seconds per image) for one pass."""
    coco = sum(v for (i, p), v in timer.seconds.items() if p == "coco")
    per_image = {}
    for i in ids:
        row = {p: timer.seconds.get((i, p), 0.0) for p in PHASES}
        row["coco"] = coco / len(ids)
        per_image[i] = row
    known = sum(sum(r.values()) for r in per_image.values())
    other = max(seconds - known, 0.0)
    for r in per_image.values():
        r["other"] = other / len(ids)
    by_group = collections.defaultdict(list)
    for i in ids:
        by_group[groups.get(dataset.image_info[i]["id"], "unknown")].append(i)
    head = f"{'group':<16}{'n':>3}" + "".join(f"{p[:11]:>12}" for p in PHASES) + f"{'total':>9}"
    lines = [head, "-" * len(head)]
    for g in sorted(by_group, key=lambda g: -max(dataset.image_info[i]["height"]
                                                 * dataset.image_info[i]["width"]
                                                 for i in by_group[g])):
        rows = [per_image[i] for i in by_group[g]]
        mean = {p: sum(r[p] for r in rows) / len(rows) for p in PHASES}
        lines.append(f"{g:<16}{len(rows):>3}" + "".join(f"{mean[p]:>12.3f}" for p in PHASES)
                     + f"{sum(mean.values()):>9.2f}")
    totals = {p: sum(r[p] for r in per_image.values()) for p in PHASES}
    lines.append(f"{'all (s total)':<16}{len(ids):>3}" + "".join(f"{totals[p]:>12.2f}"
                                                                 for p in PHASES)
                 + f"{seconds:>9.1f}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=DEFAULT_DSB, help="DSB2018 folder with val_ids.txt")
    p.add_argument("--groups", default="", help="comma-separated size groups (default all)")
    p.add_argument("--per-group", type=int, default=2, help="val ids per group (0 = all)")
    p.add_argument("--passes", type=int, default=2,
                   help="evaluations of the same ids (the recipe repeats them at each point)")
    p.add_argument("--seed", type=int, default=0, help="random-weight seed")
    args = p.parse_args(argv)

    import tempfile

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.recipes import read_image_groups

    dataset = DSBDataset().load(args.dataset, subset="val")
    dataset.prepare()
    groups = read_image_groups(os.path.join(args.dataset, "image_groups.tsv"))
    wanted = {g for g in args.groups.split(",") if g}
    ids = pick_ids(dataset, groups, wanted, args.per_group)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = build_model(args.seed, tmp)
        print(f"model built in {time.perf_counter() - t0:.1f} s; {len(ids)} val ids, "
              f"{args.passes} pass(es)", flush=True)
        results = []
        for k in range(args.passes):
            timer = PhaseTimer()
            result, seconds = timed_pass(model, dataset, ids, timer)
            results.append(result)
            print(f"\npass {k + 1}: {seconds:.1f} s ({seconds / len(ids):.2f} s/image); "
                  f"seconds per image by size group:")
            print("\n".join(report(dataset, groups, ids, timer, seconds)), flush=True)
            print("scores: " + "  ".join(f"{m}={result[m]:.6f}" for m in
                                         ("dsb", "aji", "pq", "AP", "AP50"))
                  + f"  n_pred={result['n_pred']} n_gt={result['n_gt']}", flush=True)
    same = all({k: v for k, v in r.items() if k != "seconds"}
               == {k: v for k, v in results[0].items() if k != "seconds"} for r in results)
    print(f"\nevery pass scored the same: {same}")
    return results


if __name__ == "__main__":
    main()
