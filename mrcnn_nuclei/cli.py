"""The ``mrcnn-nuclei`` command: one sub-command per task, each a function ``cmd_<name>(args)``
registered by an ``add_<name>(subparsers)`` function.

    mrcnn-nuclei train --dataset=DIR|synthetic --weights=coco|imagenet|last|none|PATH [...]
    mrcnn-nuclei detect --dataset=DIR|synthetic --weights=...|MODEL_FOLDER [--out DIR]
    mrcnn-nuclei evaluate --dataset=DIR|synthetic --weights=...|MODEL_FOLDER --out DIR
    mrcnn-nuclei info MODEL_FOLDER|WEIGHTS
    mrcnn-nuclei save-model --weights=PATH|last --out MODEL_FOLDER [--min-size N ...]

    mrcnn-nuclei segment SLIDE... --weights W --out DIR [--scheduler tcp://host:8786]
                 [--workers N] [--threads N] [--tile 1024 --overlap 128] [--level L | --mpp M]
                 [--no-tissue-mask] [--segmenter classical]
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser", "add_segment", "cmd_segment", "add_package_commands"]


# ------------------------------------------------------------------------------------- segment
def add_segment(subparsers):
    p = subparsers.add_parser(
        "segment", help="segment whole slides tile by tile on Dask",
        description="Segment whole-slide images (pyramidal TIFF/OME-TIFF/SVS, TIFF, PNG, JPEG) "
                    "tile by tile on dask.distributed workers; writes per slide OUT/<name>/ "
                    "<name>.geojson (QuPath), <name>.nuclei.csv, <name>.labels.ome.zarr. "
                    "Stopped runs resume when started again with the same arguments.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide file(s)")
    p.add_argument("--weights", help="Mask R-CNN weights file (config JSON beside) or a folder "
                                     "holding one")
    p.add_argument("--segmenter", choices=("maskrcnn", "classical"), default="maskrcnn",
                   help="maskrcnn (default, needs --weights) or classical (hematoxylin "
                        "threshold; no model)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. "
                                       "tcp://10.0.0.5:8786 (default: a local cluster)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads per local worker (default 1)")
    p.add_argument("--tile", type=int, default=1024, help="tile side in working pixels")
    p.add_argument("--overlap", type=int, default=128,
                   help="tile overlap in working pixels; must exceed the largest nucleus")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, help="pyramid level to segment at (default 0)")
    res.add_argument("--mpp", type=float, help="segment at this many microns per pixel")
    p.add_argument("--base-mpp", type=float,
                   help="microns per full-resolution pixel when the file does not say")
    p.add_argument("--no-tissue-mask", action="store_true",
                   help="segment every tile (default: skip tiles without tissue)")
    p.add_argument("--min-area", type=int, default=10, help="smallest nucleus in working pixels")
    p.add_argument("--min-confidence", type=float, help="override DETECTION_MIN_CONFIDENCE")
    p.add_argument("--class-names", nargs="+", default=(), help="names of class ids 1, 2, ...")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed tile")
    p.add_argument("--overwrite", action="store_true",
                   help="start again when OUT holds a run made with other arguments")
    p.add_argument("--keep-tiles", action="store_true",
                   help="keep the per-tile result files after the run")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_segment)
    return p


def cmd_segment(args):
    from .slides import segment_slides

    if args.segmenter == "maskrcnn" and not args.weights:
        raise SystemExit("mrcnn-nuclei segment: --weights is required (or --segmenter classical)")
    results = segment_slides(
        args.slides, args.out, weights=args.weights, segmenter=args.segmenter,
        scheduler=args.scheduler, workers=args.workers, threads=args.threads, tile=args.tile,
        overlap=args.overlap, level=args.level, mpp=args.mpp, base_mpp=args.base_mpp,
        tissue=not args.no_tissue_mask, min_area=args.min_area,
        class_names=tuple(args.class_names), min_confidence=args.min_confidence,
        retries=args.retries, progress=not args.quiet, overwrite=args.overwrite,
        keep_tiles=args.keep_tiles)
    total = sum(r["summary_data"].get("nuclei", 0) for r in results)
    if not args.quiet:
        print(f"{len(results)} slide(s), {total} nuclei; outputs under {args.out}")
    return 0


# ------------------------------------------------------- train, detect, evaluate, info, save-model
def _package_command(subparsers, name, module, add, run, help, description):
    """Register ``name`` over ``mrcnn_nuclei.commands.<module>``: its ``add`` function puts the
    options on the parser, its ``run`` function does the work (exit status 0 when it returns)."""
    import importlib

    commands = importlib.import_module(f"{__package__}.commands.{module}")
    p = subparsers.add_parser(name, help=help, description=description)
    getattr(commands, add)(p)

    def cmd(args):
        getattr(commands, run)(args)
        return 0

    p.set_defaults(func=cmd)
    return p


#: (name, module of mrcnn_nuclei.commands, its add-options function, its run function, help,
#: description) of the sub-commands built on the package's command modules.
PACKAGE_COMMANDS = (
    ("train", "nucleus", "add_train_arguments", "run",
     "train on DSB2018 or generated nuclei with a staged schedule",
     "Train Mask R-CNN (Matterport's nucleus schedule by default); checkpoints and the config "
     "JSON go to LOGS/<name><timestamp>/; --weights=last resumes."),
    ("detect", "nucleus", "add_detect_arguments", "run",
     "detect on a subset: overlays and a Kaggle submission CSV",
     "Detect nuclei on a dataset subset; --weights also takes a model folder (its config and "
     "post-processing settings)."),
    ("evaluate", "evaluate", "add_arguments", "run",
     "every metric on a dataset subset (DSB, COCO AP, AJI, PQ, ...)",
     "Evaluate a nucleus Mask R-CNN on a dataset subset: every metric, per image and on "
     "average; writes per_image.csv, summary.json, predictions_coco.json and labels/ in --out."),
    ("info", "model", "add_info_arguments", "run_info",
     "what a model folder or weights file holds",
     "Show the weights kind, the saved config and the post-processing settings of a model "
     "folder or weights file (no model is built)."),
    ("save-model", "model", "add_save_model_arguments", "run_save_model",
     "a checkpoint + its config -> a model folder with post-processing",
     "Write a model folder (weights, config.json, postprocess.json) that "
     "mrcnn_nuclei.load_model / MaskRCNN.from_folder / --weights take."),
)


def add_package_commands(subparsers):
    """train, detect, evaluate, info and save-model (:data:`PACKAGE_COMMANDS`)."""
    return [_package_command(subparsers, *spec) for spec in PACKAGE_COMMANDS]


# ---------------------------------------------------------------------------------------- main
COMMANDS = (add_segment, add_package_commands)


def build_parser():
    parser = argparse.ArgumentParser(prog="mrcnn-nuclei",
                                     description="Mask R-CNN for nuclei: command-line tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
