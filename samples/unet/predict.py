"""Predict distance maps with a trained distance U-Net.

    python samples/unet/predict.py --dataset=synthetic --weights=logs/unet/synthetic.weights.h5 \
        --out=results/unet

Writes ``<out>/<image id>.npy`` (float32 [H, W], 1 at each nucleus centre) and a PNG preview
scaled to 0..255; prints the MSE against the ground-truth distance target when masks exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))


def _sibling_open_dataset():
    """open_dataset of the train.py next to this file, loaded by path (a plain ``import train``
    could pick up another module of that name, e.g. samples/nucleus/train.py in a test run)."""
    import importlib.util

    path = Path(__file__).resolve().parent / "train.py"
    spec = importlib.util.spec_from_file_location("mrcnn_nuclei_samples_unet_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.open_dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--dataset", required=True, help="DIR or 'synthetic'")
    p.add_argument("--subset", default="val", help="DSB subset (default val)")
    p.add_argument("--weights", required=True, help="U-Net weights (.weights.h5) from train.py")
    p.add_argument("--base-filters", type=int, default=None,
                   help="filters of the first level (default: read from the .json beside "
                        "the weights, else 32)")
    p.add_argument("--out", default=str(_REPO / "results" / "unet"), help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--tile-size", type=int, default=512, help="tile larger images (multiple of 32)")
    p.add_argument("--synthetic-count", type=int, default=10, help="images for 'synthetic'")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    from PIL import Image

    from mrcnn_nuclei.unet import build_unet, distance_target, masks_to_labels, predict_distance
    open_dataset = _sibling_open_dataset()

    if not os.path.exists(args.weights):
        raise SystemExit(f"--weights={args.weights}: no such file; train one with "
                         "samples/unet/train.py")
    filters = args.base_filters
    from mrcnn_nuclei.weights import config_path_beside

    meta = config_path_beside(args.weights)  # written there by samples/unet/train.py
    if filters is None and os.path.exists(meta):
        filters = json.load(open(meta))["base_filters"]
    model = build_unet(base_filters=filters or 32, compile=False)
    model.load_weights(args.weights)
    ds = open_dataset(args.dataset, args.subset, args.synthetic_count, seed=2)
    os.makedirs(args.out, exist_ok=True)
    errors = []
    for image_id in list(ds.image_ids)[: args.limit]:
        name = str(ds.image_info[image_id]["id"]).replace("/", "_")
        dist = predict_distance(model, ds.load_image(image_id), tile_size=args.tile_size)
        np.save(os.path.join(args.out, f"{name}.npy"), dist)
        Image.fromarray(np.clip(np.rint(dist * 255), 0, 255).astype(np.uint8)).save(
            os.path.join(args.out, f"{name}.png"))
        masks, _ = ds.load_mask(image_id)
        if masks.shape[-1]:
            errors.append(float(np.mean((dist - distance_target(masks_to_labels(masks))) ** 2)))
            print(f"{name}: MSE {errors[-1]:.4f}")
    if errors:
        print(f"mean MSE over {len(errors)} images: {np.mean(errors):.4f}")
    print(f"distance maps written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
