"""Evaluate a nucleus Mask R-CNN on a dataset subset: every metric, per image and on average.

Usage::

    mrcnn-nuclei evaluate --dataset=../shared/data/dsb2018_stage1_train --subset=val \\
        --weights=last --logs=logs --out=eval_out [--limit N] [--overlays] [--min-size 0]
    mrcnn-nuclei evaluate --dataset=synthetic --subset=val --weights=none \\
        --logs=logs --out=eval_smoke --limit 4

(``python samples/nucleus/evaluate.py`` takes the same arguments.)

``--weights``: a model folder (:func:`mrcnn_nuclei.save_model`), a weights file, ``last`` (newest
checkpoint under ``--logs``, of a run of any config NAME) or ``none`` (random initialisation;
only for smoke tests).  The config saved with the weights (``<stem>.json`` beside the file, else
``config.json`` in its folder) overrides ``NucleusInferenceConfig``; inference settings (one
image per batch, ``pad64`` instead of the training ``crop``) are then forced
(:func:`mrcnn_nuclei.config.inference_config`).  A model folder's post-processing settings
apply; ``--min-size``, ``--fill-holes`` and ``--score-threshold`` override them.  A weights file
that leaves layers of the model unfilled (e.g. a ResNet-18 checkpoint with a ResNet-34 config)
is an error naming them unless ``--allow-partial-weights`` is given.  The weights file and
``--out`` are checked before the model is built; the images and masks before evaluation.

Images without nuclei (an empty ``masks/`` folder in the DSB layout) are scored: an empty
prediction scores 1.0 in every metric (DSB, AJI, F1, PQ ...), any prediction 0.0.

Outputs in ``--out`` (:func:`mrcnn_nuclei.evaluation.evaluate_dataset`): ``per_image.csv`` (one
row per image, every metric of ``mrcnn_nuclei.metrics.evaluate_all``), ``summary.json`` (means,
COCO mask AP over the subset, PanNuke bPQ/mPQ with ``image_info["tissue"]`` as the tissue,
``"all"`` when absent, settings), ``predictions_coco.json`` (COCO results, image ids listed in
summary.json), ``labels/<id>.tif`` (predicted label images) and with ``--overlays``
``overlays/<id>.png`` (green = true positive, red = false positive, yellow = missed nucleus).
"""

from __future__ import annotations

import argparse
import os

from ..evaluation import (COUNTS, METRICS, as_detect_fn, evaluate_dataset,  # noqa: F401
                          format_table, postprocess_detection)

__all__ = ["add_arguments", "run", "main", "inference_config", "resolve_weights", "build_model",
           "build_dataset", "evaluate_dataset"]


def inference_config(weights_path=None):
    """``NucleusInferenceConfig``, or the config saved with ``weights_path`` (a weights file or a
    model folder) set for inference."""
    from ..config import NucleusInferenceConfig
    from ..modelfolder import inference_config_for
    from ..weights import find_config_beside

    if weights_path and not os.path.isdir(weights_path):
        found = find_config_beside(weights_path)
        if found:
            print(f"config: {found}")
    return inference_config_for(weights_path, default=NucleusInferenceConfig())


def resolve_weights(weights, logs):
    """Weights path for ``--weights`` (model folder, file, ``last`` or ``none`` -> None), checked
    cheaply (missing, truncated or foreign file) before any model is built; SystemExit
    otherwise."""
    from ..runs import find_last_checkpoint
    from ..modelfolder import WEIGHTS_NAME
    from ..weights import check_weights_file

    if weights == "none":
        return None
    if weights == "last":
        try:  # runs of any config NAME: the config beside the checkpoint says which
            path = find_last_checkpoint(logs, None)
        except FileNotFoundError as e:
            raise SystemExit(f"--weights=last: {e}") from None
    else:
        path = weights
        if os.path.isdir(path) and os.path.exists(os.path.join(path, WEIGHTS_NAME)):
            path = os.path.join(path, WEIGHTS_NAME)  # a model folder
        if not os.path.exists(path):
            raise SystemExit(f"--weights={weights}: file not found (give a model folder, a "
                             "weights file, 'last' for the newest checkpoint under --logs, or "
                             "'none')")
    try:
        check_weights_file(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--weights={weights}: {e}") from None
    return path


def build_model(weights, logs, allow_partial=False):
    """MaskRCNN in inference mode with ``weights`` (model folder, path, ``last`` or ``none``),
    its post-processing settings in ``.postprocess`` (those of a model folder, else defaults).

    allow_partial: accept a file that leaves layers unfilled (else PartialWeightsError)."""
    from ..config import NucleusInferenceConfig
    from ..model import MaskRCNN
    from ..modelfolder import load_model

    path = resolve_weights(weights, logs)
    if not path:
        return MaskRCNN(mode="inference", config=inference_config(None), model_dir=logs)
    inference_config(path)  # prints which config file is used
    print(f"weights: {path}")
    return load_model(path, allow_partial=allow_partial, model_dir=logs,
                      default_config=NucleusInferenceConfig())


def build_dataset(dataset, subset, limit=None, seed=1000):
    """Prepared dataset and image ids: a DSB folder or ``synthetic`` (val uses ``seed``)."""
    if dataset == "synthetic":
        from ..datasets import SyntheticNucleiDataset

        ds = SyntheticNucleiDataset()
        ds.load(limit or 8, seed=seed if subset == "val" else seed + 1)
    else:
        from ..datasets import DSBDataset

        if not os.path.isdir(dataset):
            raise SystemExit(f"--dataset={dataset}: not a folder (give the DSB folder holding "
                             "stage1_train/ and val_ids.txt, or 'synthetic')")
        ds = DSBDataset()
        ds.load(dataset, subset=subset, keep_empty=True)  # images with no nuclei are scored
    ds.prepare()
    ids = list(ds.image_ids)
    return ds, ids[:limit] if limit else ids


def add_arguments(ap):
    """The evaluate options on the argparse parser ``ap``."""
    ap.add_argument("--dataset", required=True, help="DSB folder or 'synthetic'")
    ap.add_argument("--subset", default="val", choices=["val", "train"])
    ap.add_argument("--weights", required=True,
                    help="model folder, weights file, 'last' or 'none'")
    ap.add_argument("--logs", default="logs", help="model_dir (where 'last' looks)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    ap.add_argument("--overlays", action="store_true", help="write overlays/<id>.png")
    ap.add_argument("--min-size", type=int, default=None,
                    help="drop nuclei below N pixels (default: the model folder's, else 0)")
    ap.add_argument("--fill-holes", action="store_true", default=None,
                    help="fill holes in predicted masks")
    ap.add_argument("--score-threshold", type=float, default=None,
                    help="drop detections scoring below X (default: the model folder's, else 0)")
    ap.add_argument("--coco-backend", default="pycocotools", choices=["pycocotools", "numpy"])
    ap.add_argument("--skip-bad-images", action="store_true",
                    help="skip unreadable or damaged images/masks (counted in the log) instead "
                         "of stopping with the list of bad files")
    ap.add_argument("--allow-partial-weights", action="store_true",
                    help="accept a weights file that leaves layers of the model unfilled (random)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--verbose", type=int, default=1)
    return ap


def run(args):
    """Run the parsed evaluate arguments; returns the summary dict."""
    from ..fileio import check_writable_dir

    try:
        check_writable_dir(args.out, "--out folder")
        resolve_weights(args.weights, args.logs)  # fails fast, before the datasets and model
        dataset, ids = build_dataset(args.dataset, args.subset, args.limit)
        model = build_model(args.weights, args.logs, allow_partial=args.allow_partial_weights)
        if args.skip_bad_images:
            model.config.SKIP_BAD_IMAGES = True
    except (OSError, ValueError) as err:
        if args.verbose > 1:
            raise
        raise SystemExit(f"error: {err}") from None
    return evaluate_dataset(model, dataset, ids, args.out, overlays=args.overlays,
                            min_size=args.min_size, fill_holes=args.fill_holes,
                            score_threshold=args.score_threshold,
                            coco_backend=args.coco_backend,
                            progress=args.verbose >= 1 and not args.no_progress,
                            verbose=args.verbose)


def main(argv=None, prog=None):
    """Command-line entry point; returns the summary dict."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    return run(add_arguments(ap).parse_args(argv))
