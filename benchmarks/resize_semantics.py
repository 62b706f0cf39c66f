"""RESIZE_SEMANTICS "matterport" vs "project" on real DSB images: what the choice changes, and
the speed of the resize / mini-mask / unmold functions.

    python benchmarks/resize_semantics.py [--shared ../shared] [--repeat 3]

Prints, per semantics: the mean grey-level drop of the outer pixel ring of x2-upscaled images
(Matterport's cval-0 border), the mean IoU of expand_mask(minimize_mask(m)) with a 28x28 and a
56x56 mini-mask on the x2-upscaled masks, and the median time of each function.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mrcnn_nuclei.data import image_ops as IO


def load_cases(shared, n=8):
    ref = np.load(Path(shared) / "parity" / "matterport_reference.npz")
    root = Path(shared) / "data" / "dsb2018_stage1_train" / "stage1_train"
    cases = []
    for k in range(min(n, int(ref["n_cases"]))):
        image_id = str(ref[f"c{k}_image_id"])
        image = np.asarray(Image.open(root / image_id / "images" / f"{image_id}.png")
                           .convert("RGB"))
        files = sorted((root / image_id / "masks").glob("*.png"))
        masks = np.stack([np.asarray(Image.open(f)) > 0 for f in files], axis=-1)
        cases.append((image, masks, ref[f"c{k}_mrcnn_mask"][:24, :, :, 1],
                      ref[f"c{k}_unmold_boxes"]))
    return cases


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cases = load_cases(args.shared)
    for sem in IO.SEMANTICS:
        ring, ious = [], {28: [], 56: []}
        for image, masks, _, _ in cases:
            up = IO.resize_image(image, mode="pad64", min_scale=2.0, semantics=sem)[0]
            ref = IO.resize_image(image, mode="pad64", min_scale=2.0, semantics="project")[0]
            h, w = image.shape[0] * 2, image.shape[1] * 2
            edge = np.zeros((h, w), bool)
            edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
            ring.append(float((ref[:h, :w][edge].astype(float) - up[:h, :w][edge]).mean()))
            scaled = IO.resize_mask(masks, 2.0, [(0, 0)] * 3, semantics=sem)
            scaled = scaled[..., scaled.any(axis=(0, 1))]
            boxes = IO.extract_bboxes(scaled)
            for size in ious:
                mini = IO.minimize_mask(boxes, scaled, (size, size), semantics=sem)
                back = IO.expand_mask(boxes, mini, scaled.shape, semantics=sem)
                inter = (back & scaled).sum(axis=(0, 1))
                ious[size].extend(inter / (back | scaled).sum(axis=(0, 1)))
        print(f"{sem:10s} outer-ring darkening at x2 {np.mean(ring):5.1f} grey levels; "
              f"mini-mask round-trip IoU 28x28 {np.mean(ious[28]):.3f}, "
              f"56x56 {np.mean(ious[56]):.3f} ({len(ious[28])} nuclei)")
    print("\nmedian seconds over the 8 images (sum), per function:")
    for sem in IO.SEMANTICS:
        t = {"resize_image x2": 0.0, "resize_mask x2": 0.0, "minimize_mask 56": 0.0,
             "packed_minimize_mask 56": 0.0, "expand_mask": 0.0, "paste_masks (unmold) 24": 0.0}
        for image, masks, soft, boxes in cases:
            t["resize_image x2"] += timed(lambda: IO.resize_image(
                image, mode="pad64", min_scale=2.0, semantics=sem), args.repeat)
            t["resize_mask x2"] += timed(lambda: IO.resize_mask(
                masks, 2.0, [(0, 0)] * 3, semantics=sem), args.repeat)
            keep = masks.any(axis=(0, 1))
            m = masks[..., keep]
            b = IO.extract_bboxes(m)
            packed = np.packbits(m, axis=-1)
            t["minimize_mask 56"] += timed(lambda: IO.minimize_mask(b, m, (56, 56), semantics=sem),
                                           args.repeat)
            t["packed_minimize_mask 56"] += timed(lambda: IO.packed_minimize_mask(
                b, packed, np.arange(m.shape[-1]), (56, 56), semantics=sem), args.repeat)
            mini = IO.minimize_mask(b, m, (56, 56), semantics=sem)
            t["expand_mask"] += timed(lambda: IO.expand_mask(b, mini, m.shape, semantics=sem),
                                      args.repeat)
            t["paste_masks (unmold) 24"] += timed(lambda: IO.paste_masks(
                soft, boxes, image.shape, semantics=sem), args.repeat)
        print(f"  {sem:10s} " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))


if __name__ == "__main__":
    main()
