"""Train the distance U-Net (the Mask R-CNN+ distance channel) from the command line.

    python samples/unet/train.py --dataset=synthetic --epochs=2 --out=logs/unet/synthetic.weights.h5
    python samples/unet/train.py --dataset=/path/to/dsb2018 --out=logs/unet/dsb.weights.h5
    python samples/unet/train.py --dataset=/path/to/monuseg_train --crop=256

--dataset: ``synthetic`` (generated nuclei), a DSB2018 folder (holding stage1_train/), a MoNuSeg
folder (Tissue_Images/ + Annotations/) or a PanNuke folder (fold folders with images.npy).
Defaults follow the paper recipe: 80 epochs, batch size 2, Adam 1e-3 divided by 10 every 25 epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO))


def open_dataset(spec, subset="train", synthetic_count=40, seed=1):
    """--dataset value -> prepared Dataset (synthetic, DSB, MoNuSeg or PanNuke folder)."""
    if spec == "synthetic":
        from mrcnn_nuclei.datasets import SyntheticNucleiDataset

        ds = SyntheticNucleiDataset().load(synthetic_count, seed=seed, colour="mixed")
    else:
        root = Path(spec)
        if not root.is_dir():
            raise SystemExit(f"--dataset={spec}: not a folder (or use --dataset=synthetic)")
        if (root / "stage1_train").is_dir() or root.name == "stage1_train":
            from mrcnn_nuclei.datasets import DSBDataset

            ds = DSBDataset().load(root, subset=subset if (root / "val_ids.txt").exists() else None)
        elif (root / "Tissue_Images").is_dir() or any(root.glob("*.xml")):
            from mrcnn_nuclei.datasets.monuseg import MoNuSegDataset

            ds = MoNuSegDataset().load(root)
        elif any(root.rglob("images.npy")):
            from mrcnn_nuclei.datasets.pannuke import PanNukeDataset

            ds = PanNukeDataset().load(root)
        else:
            raise SystemExit(f"--dataset={spec}: expected a DSB folder (stage1_train/), a MoNuSeg "
                             "folder (Tissue_Images/, Annotations/), a PanNuke folder (images.npy"
                             ") or 'synthetic'")
    ds.prepare()
    return ds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--dataset", required=True, help="DIR or 'synthetic'")
    p.add_argument("--subset", default="train", help="DSB subset: train (default) or val")
    p.add_argument("--epochs", type=int, default=80, help="epochs (default 80)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches per epoch (default: one pass over the images)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--crop", type=int, default=256, help="random crop size, multiple of 32")
    p.add_argument("--base-filters", type=int, default=32, help="filters of the first level")
    p.add_argument("--weights", default=None, help="start from these U-Net weights (optional)")
    p.add_argument("--out", default=str(_REPO / "logs" / "unet" / "distance_unet.weights.h5"),
                   help="where to save the trained weights (.weights.h5)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--synthetic-count", type=int, default=40, help="images for --dataset=synthetic")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from mrcnn_nuclei.unet import build_unet, train_unet

    if not str(args.out).endswith(".weights.h5"):
        raise SystemExit(f"--out={args.out}: Keras 3 weight files must end in .weights.h5")
    keras.utils.set_random_seed(args.seed)
    ds = open_dataset(args.dataset, args.subset, args.synthetic_count)
    print(f"{len(ds.image_ids)} training images from {args.dataset}")
    model = build_unet(input_channels=3, base_filters=args.base_filters)
    if args.weights:
        model.load_weights(args.weights)
    train_unet(model, ds, epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop,
               steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    model.save_weights(args.out)
    from mrcnn_nuclei.weights import config_path_beside

    with open(config_path_beside(args.out), "w") as f:
        f.write(f'{{"base_filters": {args.base_filters}, "input_channels": 3}}\n')
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
