"""Mask R-CNN for nuclei: train and detect from the command line (Matterport's nucleus CLI and more).

``mrcnn-nuclei train|detect`` and ``python samples/nucleus/train.py train|detect`` (Matterport's
familiar entry point, a thin wrapper) run this module.  Quick start on generated nuclei (no
download, a few minutes on a laptop CPU):

    mrcnn-nuclei train --dataset=synthetic --weights=none
    mrcnn-nuclei detect --dataset=synthetic --weights=last

Kaggle DSB2018 stage 1 (folder holding stage1_train/ and val_ids.txt):

    mrcnn-nuclei train --dataset=/path/to/dsb2018 --subset=train --weights=coco
    mrcnn-nuclei train --dataset=/path/to/dsb2018 --weights=last   # resume
    mrcnn-nuclei detect --dataset=/path/to/dsb2018 --subset=val --weights=last

--weights: coco (weights/mask_rcnn_coco.h5, class heads excluded), imagenet (the Keras-1 ResNet-50
file), last (newest checkpoint in --logs), none (random init), a path or (detect) a model folder
(mrcnn_nuclei.save_model: its own config and post-processing settings).  --schedule picks a named
staged schedule (mrcnn_nuclei.schedules; default Matterport's heads-to-20 then all-to-40) and
--epochs changes its per-stage totals, e.g. --epochs=20,40.

The synthetic preset (SyntheticConfig) is small on purpose: 128x128 images, ResNet-18 with group
norm, a 64-channel FPN and light heads, so it trains from scratch in minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import time

import numpy as np

from ..config import NucleusConfig, NucleusInferenceConfig, inference_config

__all__ = ["SyntheticConfig", "make_config", "load_dataset", "check_before_build", "cmd_train",
           "cmd_detect", "overlay_image", "save_overlay", "build_parser", "add_train_arguments",
           "add_detect_arguments", "run", "main", "default_augmentation", "detect_model"]

#: Defaults of --logs and of detect's output folder (relative to the working folder; the
#: samples/nucleus/train.py wrapper passes folders of the checkout).
DEFAULT_LOGS = "logs"
DEFAULT_RESULTS = os.path.join("results", "nucleus")

# Synthetic image sets: training images come from one seed, held-out images from another.
SYNTHETIC_SEEDS = {"train": 1, "val": 2, "test": 3}
SYNTHETIC_DEFAULT_EPOCHS = "1,6"


# ---------------------------------------------------------------------------------------- configs
class SyntheticConfig(NucleusConfig):
    """Small from-scratch preset for generated nuclei (128 px, ResNet-18 + GN, light heads)."""

    NAME = "synthetic_nuclei"
    IMAGES_PER_GPU = 2
    STEPS_PER_EPOCH = 40
    VALIDATION_STEPS = 2
    BACKBONE = "resnet18"
    NORM = "gn"
    GN_GROUPS = 8
    TRAIN_BN = True
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGE_MIN_SCALE = 0
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 256
    POST_NMS_ROIS_INFERENCE = 256
    RPN_NMS_THRESHOLD = 0.7
    TRAIN_ROIS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 40
    DETECTION_MAX_INSTANCES = 60
    DETECTION_MIN_CONFIDENCE = 0.5
    MINI_MASK_SHAPE = (28, 28)
    MEAN_PIXEL = np.array([40.0, 40.0, 40.0])
    LEARNING_RATE = 0.01
    LEARNING_RATE_WARMUP_STEPS = 40
    SEED = 0


def make_config(args, inference):
    """Config for the CLI arguments: the preset of the dataset with command-line overrides; for
    ``inference`` its twin (:func:`mrcnn_nuclei.config.inference_config`; DSB with Matterport's
    inference RPN NMS threshold, as ``NucleusInferenceConfig``)."""
    synthetic = args.dataset == "synthetic"
    base = SyntheticConfig if synthetic else NucleusConfig
    overrides = {}
    if getattr(args, "backbone", None):
        overrides["BACKBONE"] = args.backbone
    if getattr(args, "image_size", None):
        size = int(args.image_size)
        overrides.update(IMAGE_MIN_DIM=size, IMAGE_MAX_DIM=size)
        if not synthetic:
            overrides["IMAGE_RESIZE_MODE"] = "crop"
    if getattr(args, "steps_per_epoch", None):
        overrides["STEPS_PER_EPOCH"] = int(args.steps_per_epoch)
    if getattr(args, "validation_steps", None):
        overrides["VALIDATION_STEPS"] = int(args.validation_steps)
    if getattr(args, "lr", None):
        overrides["LEARNING_RATE"] = float(args.lr)
    if getattr(args, "images_per_gpu", None):
        overrides["IMAGES_PER_GPU"] = int(args.images_per_gpu)
    if getattr(args, "skip_bad_images", False):
        overrides["SKIP_BAD_IMAGES"] = True
    config = type(base.__name__, (base,), overrides)() if overrides else base()
    if not inference:
        return config
    return inference_config(config, **({} if synthetic else {
        "RPN_NMS_THRESHOLD": NucleusInferenceConfig.RPN_NMS_THRESHOLD}))


# ---------------------------------------------------------------------------------------- data
def load_dataset(args, subset):
    """Prepared Dataset for ``--dataset`` (a DSB folder or "synthetic") and ``subset``."""
    if args.dataset == "synthetic":
        from ..datasets import SyntheticNucleiDataset

        size = int(args.image_size or SyntheticConfig.IMAGE_MAX_DIM)
        if subset not in SYNTHETIC_SEEDS:
            raise SystemExit(f"--subset={subset}: synthetic subsets are "
                             f"{', '.join(SYNTHETIC_SEEDS)}")
        count = int(args.synthetic_count) if subset == "train" else max(
            2, int(args.synthetic_count) // 4)
        if getattr(args, "limit", None):
            count = min(count, int(args.limit))
        ds = SyntheticNucleiDataset()
        ds.load(count, seed=SYNTHETIC_SEEDS[subset], height=size, width=size, max_nuclei=20)
    else:
        from ..datasets import DSBDataset

        if not os.path.isdir(args.dataset):
            raise SystemExit(f"--dataset={args.dataset}: not a folder; pass the DSB2018 folder "
                             "(holding stage1_train/ and val_ids.txt) or 'synthetic'")
        ds = DSBDataset().load(args.dataset, subset=subset)
        if getattr(args, "limit", None):
            ids = [info["id"] for info in ds.image_info[: int(args.limit)]]
            ds = DSBDataset().load(args.dataset, ids=ids)
    ds.prepare()
    return ds


def default_augmentation():
    """The pipeline's default augmentation
    (:func:`mrcnn_nuclei.data.augment.default_augmentation`)."""
    from ..data.augment import default_augmentation as make

    return make()


# ---------------------------------------------------------------------------------------- train
def _loss_recorder():
    import keras

    class LossRecorder(keras.callbacks.Callback):
        """Keeps each epoch's logs (loss and the five Mask R-CNN losses)."""

        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append((epoch + 1, dict(logs or {})))

    return LossRecorder()


def check_before_build(args, config, schedule=None):
    """Checks that need no model, so that they fail before the slow build: the weights file
    (missing, truncated, not a weights file; ``last`` resolved in ``--logs`` for this config's
    NAME) and, for training, a writable ``--logs`` folder and a schedule that trains past the
    checkpoint's epoch.  Returns the weights path (None for ``none``); raises SystemExit,
    OSError or ValueError with the message to show."""
    from .. import weights
    from ..fileio import check_writable_dir
    from ..runs import checkpoint_epoch

    path = weights.resolve_weights_arg(args.weights, model_dir=args.logs, name=config.NAME)
    if schedule is None:
        return path
    check_writable_dir(args.logs, "--logs folder")
    done = checkpoint_epoch(path) if path else 0
    last = schedule[-1].epochs_total
    if done >= last:
        totals = ",".join(str(done + s.epochs_total) for s in schedule)
        raise SystemExit(
            f"error: nothing to train: --weights={args.weights} is the checkpoint {path} of epoch "
            f"{done} and the schedule ends at epoch {last} (--epochs are totals counted from the "
            f"start, as Matterport's). Pass --epochs with a last total above {done} to continue "
            f"(e.g. --epochs={totals}), or start from other weights.")
    return path


def cmd_train(args):
    """Train with the staged schedule; returns the loss recorder's epochs [(epoch, logs)]."""
    from .. import schedules, weights
    from ..model import MaskRCNN

    config = make_config(args, inference=False)
    epochs = args.epochs or (SYNTHETIC_DEFAULT_EPOCHS if args.dataset == "synthetic" else None)
    schedule = schedules.build_schedule(args.schedule, epochs=epochs)
    check_before_build(args, config, schedule)
    if args.verbose > 1:
        config.display()
    train_ds = load_dataset(args, args.subset)
    val_subset = "val" if args.subset != "val" else "test"
    val_ds = load_dataset(args, val_subset) if args.dataset == "synthetic" or \
        args.subset == "train" else None
    model = MaskRCNN("training", config, model_dir=args.logs)
    path, report = weights.load_start_weights(model, args.weights, allow_partial=True)
    print(f"Weights: {path or 'none (random init)'}")
    if report is not None:
        print(report)
    base_lr = config.LEARNING_RATE
    print(f"Dataset: {args.dataset} ({len(train_ds.image_ids)} training images)\n"
          f"Schedule {args.schedule}:\n{schedules.describe(schedule, base_lr)}")
    augmentation = None
    if args.augment == "on" or (args.augment == "auto" and args.dataset != "synthetic"):
        augmentation = default_augmentation()
    recorder = _loss_recorder()
    start = time.time()
    schedules.run_schedule(model, train_ds, val_ds, schedule, base_lr, augmentation=augmentation,
                           custom_callbacks=[recorder], workers=args.workers)
    if recorder.epochs:
        print("\nepoch  loss      " + "  ".join(f"{k:>10}" for k in _LOSSES))
        for epoch, logs in recorder.epochs:
            print(f"{epoch:5d}  {logs.get('loss', float('nan')):8.4f}  " +
                  "  ".join(f"{logs.get(k, float('nan')):10.4f}" for k in _LOSSES))
    where = (f"checkpoints in {model.log_dir}" if os.path.isdir(model.log_dir)
             else "no checkpoint written")
    print(f"Trained to epoch {model.epoch} in {time.time() - start:.0f} s; {where}")
    return recorder.epochs


_LOSSES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
           "mrcnn_mask_loss")


# ---------------------------------------------------------------------------------------- detect
def overlay_image(image, masks, alpha=0.45, seed=0):
    """[H, W, 3] uint8: ``image`` with each of the [H, W, N] ``masks`` tinted in its own colour."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3].astype(np.float32)
    if masks.shape[-1] == 0:
        return image.astype(np.uint8)
    colours = np.random.default_rng(seed).uniform(60, 255, (masks.shape[-1], 3)).astype(np.float32)
    covered = masks.any(axis=2)
    owner = np.argmax(masks, axis=2)  # first mask covering each pixel
    tint = colours[owner]
    out = image.copy()
    out[covered] = (1 - alpha) * image[covered] + alpha * tint[covered]
    return np.clip(out, 0, 255).astype(np.uint8)


def save_overlay(path, image, result, class_names):
    """Write a PNG of the detections on ``image`` (visualize.display_instances; a plain tinted
    overlay if that fails)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import visualize

    try:
        fig, ax = plt.subplots(1, figsize=(8, 8))
        visualize.display_instances(image, result["rois"], result["masks"], result["class_ids"],
                                    class_names, result["scores"], ax=ax, show_bbox=False,
                                    show_mask=True, title="")
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return path
    except Exception as exc:  # noqa: BLE001 - fall back to the plain overlay below
        plt.close("all")
        logging.getLogger(__name__).warning("display_instances failed (%s); writing a plain "
                                            "overlay", exc)
    from PIL import Image

    Image.fromarray(overlay_image(image, result["masks"])).save(path)
    return path


def _is_model_folder(spec):
    from ..modelfolder import WEIGHTS_NAME

    return os.path.isdir(str(spec)) and os.path.exists(os.path.join(str(spec), WEIGHTS_NAME))


def detect_model(args, check=True):
    """The inference MaskRCNN of ``detect``: a model folder as saved (its config and
    post-processing), else the config of the arguments with ``--weights`` loaded (checked
    before the build unless ``check=False``); returns ``(model, weights path or None)``."""
    from .. import weights
    from ..model import MaskRCNN
    from ..modelfolder import PostProcess, load_model

    if _is_model_folder(args.weights):
        model = load_model(args.weights, allow_partial=args.allow_partial_weights,
                           model_dir=args.logs)
        return model, model.source
    config = make_config(args, inference=True)
    if check:
        check_before_build(args, config)
    model = MaskRCNN("inference", config, model_dir=args.logs)
    path, _ = weights.load_start_weights(model, args.weights,
                                         allow_partial=args.allow_partial_weights)
    model.postprocess = PostProcess()
    return model, path


def cmd_detect(args):
    """Detect on a subset (post-processed: :class:`mrcnn_nuclei.modelfolder.PostProcess`);
    writes overlays and a Kaggle CSV, prints the DSB score where masks exist; returns a summary
    dict."""
    from ..evaluation import detect_images
    from ..metrics import dsb_score, masks_to_label
    from ..postprocess import write_submission_csv

    if not _is_model_folder(args.weights):
        check_before_build(args, make_config(args, inference=True))
    dataset = load_dataset(args, args.subset)
    model, path = detect_model(args, check=False)
    print(f"Weights: {path or 'none (random init)'}")
    out_dir = args.out or os.path.join(
        args.results_dir, f"submit_{datetime.datetime.now():%Y%m%dT%H%M%S}")
    os.makedirs(out_dir, exist_ok=True)
    rows, scores, counts, times = [], [], [], []
    for d in detect_images(model, dataset, dataset.image_ids, model.postprocess,
                           progress=args.verbose >= 1 and not args.no_progress):
        masks, source_id = d["masks"], str(dataset.image_info[d["image_id"]]["id"])
        times.append(d["seconds"])
        counts.append(masks.shape[-1])
        rows.append((source_id, masks))
        save_overlay(os.path.join(out_dir, f"{source_id}.png"), d["image"], d["result"],
                     dataset.class_names)
        line = f"{source_id}: {masks.shape[-1]} nuclei"
        if masks.shape[-1]:
            line += f", scores {d['scores'].min():.2f}-{d['scores'].max():.2f}"
        try:
            gt_masks, _ = dataset.load_mask(d["image_id"])
        except Exception:  # noqa: BLE001 - images without ground truth
            gt_masks = None
        if gt_masks is not None:
            score = dsb_score(masks_to_label(gt_masks), masks_to_label(masks))
            scores.append(score)
            line += f", DSB score {score:.3f} ({gt_masks.shape[-1]} true)"
        print(line)
    csv_path = os.path.join(out_dir, "submit.csv")
    write_submission_csv(csv_path, rows)
    summary = {"images": len(rows), "detections": int(sum(counts)), "out_dir": out_dir,
               "csv": csv_path, "median_seconds": float(np.median(times)) if times else 0.0,
               "dsb_score": float(np.mean(scores)) if scores else None}
    print(f"\n{summary['images']} images, {summary['detections']} detections, median "
          f"{summary['median_seconds']:.2f} s/image" +
          (f", mean DSB score {summary['dsb_score']:.3f}" if scores else "") +
          f"\nOverlays and {os.path.basename(csv_path)} in {out_dir}")
    return summary


# ---------------------------------------------------------------------------------------- CLI
def _common_arguments(sp, default_logs):
    sp.add_argument("--dataset", required=True, metavar="DIR|synthetic",
                    help="DSB2018 folder (stage1_train/, val_ids.txt) or 'synthetic'")
    sp.add_argument("--weights", required=True, metavar="coco|imagenet|last|none|PATH",
                    help="start weights (coco excludes the class-specific heads)")
    sp.add_argument("--logs", default=default_logs, metavar="DIR",
                    help=f"checkpoints and TensorBoard logs (default {default_logs})")
    sp.add_argument("--image-size", type=int, default=None, metavar="N",
                    help="square image / crop size (multiple of 64)")
    sp.add_argument("--backbone", default=None,
                    choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    sp.add_argument("--synthetic-count", type=int, default=64, metavar="N",
                    help="synthetic training images (held-out sets get N/4)")
    sp.add_argument("--limit", type=int, default=None, metavar="N",
                    help="use only the first N images of the subset")
    sp.add_argument("--skip-bad-images", action="store_true",
                    help="skip unreadable or damaged images/masks (counted in the log) instead "
                         "of stopping with the list of bad files")
    sp.add_argument("--allow-partial-weights", action="store_true",
                    help="detect: accept a weights file that leaves layers of the model "
                         "unfilled (random); without it that is an error naming them "
                         "(training always accepts and reports them)")
    sp.add_argument("-v", "--verbose", action="count", default=1)


def add_train_arguments(t, default_logs=DEFAULT_LOGS):
    """The ``train`` options on the argparse parser ``t``."""
    _common_arguments(t, default_logs)
    t.add_argument("--subset", default="train", help="train (default) or val")
    t.add_argument("--schedule", default="matterport",
                   help="matterport (default: heads to 20, all to 40), three-stage, "
                        "mrcnn-plus or scratch (one stage, all layers)")
    t.add_argument("--epochs", default=None, metavar="E1,E2,..",
                   help="epoch totals per stage, e.g. 20,40 (synthetic default "
                        f"{SYNTHETIC_DEFAULT_EPOCHS})")
    t.add_argument("--steps-per-epoch", type=int, default=None, metavar="N")
    t.add_argument("--validation-steps", type=int, default=None, metavar="N")
    t.add_argument("--images-per-gpu", type=int, default=None, metavar="N", help="batch size")
    t.add_argument("--lr", type=float, default=None, metavar="X", help="base learning rate")
    t.add_argument("--workers", type=int, default=1, metavar="N", help="data loader workers")
    t.add_argument("--augment", choices=["auto", "on", "off"], default="auto",
                   help="auto: on for DSB, off for synthetic")
    t.set_defaults(command="train")
    return t


def add_detect_arguments(d, default_logs=DEFAULT_LOGS, default_results=DEFAULT_RESULTS):
    """The ``detect`` options on the argparse parser ``d``."""
    _common_arguments(d, default_logs)
    d.add_argument("--subset", default="val", help="val (default), train or test (synthetic)")
    d.add_argument("--out", default=None, metavar="DIR",
                   help=f"output folder (default {default_results}/submit_<time>)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(command="detect", results_dir=default_results)
    return d


def build_parser(prog=None, default_logs=DEFAULT_LOGS, default_results=DEFAULT_RESULTS):
    """The argparse parser of ``train`` and ``detect``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train or run Mask R-CNN on nuclei (Kaggle DSB2018 or generated nuclei).",
        epilog="Example: %(prog)s train --dataset=synthetic --weights=none")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,detect}")
    add_train_arguments(sub.add_parser("train", help="train with a staged schedule"),
                        default_logs)
    add_detect_arguments(sub.add_parser(
        "detect", help="detect, write overlays and a Kaggle submission CSV"), default_logs,
        default_results)
    return p


def run(args):
    """Run parsed ``train`` / ``detect`` arguments; returns the command's result."""
    logging.basicConfig(level=logging.INFO if args.verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    print(f"Command: {args.command}  dataset: {args.dataset}  weights: {args.weights}  "
          f"logs: {args.logs}")
    try:
        if args.command == "train":
            return cmd_train(args)
        return cmd_detect(args)
    except (OSError, ValueError) as err:
        if args.verbose > 1:
            raise
        raise SystemExit(f"error: {err}\n(run with -vv for the traceback)") from None


def main(argv=None, **parser_options):
    """Entry point: parse ``argv`` and run the command; returns its result.
    parser_options: see :func:`build_parser` (the script passes its checkout's folders)."""
    return run(build_parser(**parser_options).parse_args(argv))
