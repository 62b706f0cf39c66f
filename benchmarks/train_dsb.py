"""Time-to-accuracy of from-scratch Mask R-CNN training on DSB2018 (CPU recipe).

Trains :class:`mrcnn_nuclei.recipes.DSBScratchConfig` (or the config with ``--set`` overrides)
from random init on the 596 training ids of the DSB2018 stage-1 folder (all ids not in
val_ids.txt) for ``--minutes`` of training wall clock, evaluates on the 68 val ids every
``--eval-every`` training minutes and at the end (evaluation time is reported separately and not
counted in the budget), prints the curve (DSB score, COCO mask AP/AP50, AJI, PQ against minutes)
and saves the final weights with their Config JSON.

    python benchmarks/train_dsb.py --minutes 60 --eval-every 20 --out /tmp/dsb60
    python benchmarks/train_dsb.py --minutes 8 --eval-every 0 --set BACKBONE=resnet50 \\
        --val-limit 20                                           # an ablation
    python benchmarks/train_dsb.py --minutes 120 --eval-every 30 --holdout 60 --tune \\
        --out runs/m120                  # the shipped model folder: runs/m120/model

``--tune`` (with ``--holdout``) then tunes the model folder's post-processing on the held-out ids
(``tune_postprocess.py --min-confidence 0.3 --write``) and scores the val ids once more with it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DSB = str(_REPO.parent / "shared" / "data" / "dsb2018_stage1_train")


def parse_overrides(items):
    """``["NAME=value", ...]`` -> dict; values are Python literals (strings may be bare)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE, e.g. BACKBONE=resnet50")
        key, text = item.split("=", 1)
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        out[key.strip().upper()] = value
    return out


def save_recipe_model(model, config, folder):
    """The trained weights as a model folder (``mrcnn_nuclei.modelfolder``) with the recipe's
    inference config (:func:`mrcnn_nuclei.recipes.inference_twin`) and default
    post-processing: what the curve's final point scored."""
    from mrcnn_nuclei.model import MaskRCNN
    from mrcnn_nuclei.modelfolder import save_model
    from mrcnn_nuclei.recipes import copy_weights, inference_twin

    infer = MaskRCNN("inference", inference_twin(config), model_dir=os.path.dirname(folder))
    copy_weights(model, infer)
    return save_model(infer, folder)


def tune_folder(folder, args, val_names=None):
    """Tune ``folder``'s post-processing on the held-out ids (``OUT/holdout_ids.txt``, beside
    the folder) and write it there; with ``val_names``, score those ids with the tuned folder.
    Returns ``{"postprocess": ..., "holdout": sweep gain, "val": curve-style row}``."""
    import tune_postprocess
    from tta_eval import score

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.modelfolder import load_model

    print("\ntuning the post-processing on the held-out ids:", flush=True)
    result = tune_postprocess.main(["--model", folder, "--dataset", args.dataset, "--ids",
                                    "holdout", "--min-confidence", str(args.tune_min_confidence),
                                    "--write", "--top", "5"])
    out = {"holdout": {"before": result["current"]["dsb"], "after": result["writable"]["dsb"]}}
    model = load_model(folder)
    out["postprocess"] = model.postprocess.to_dict()
    if val_names:
        ds = DSBDataset().load(args.dataset, ids=list(val_names))
        ds.prepare()
        row = score(model, ds, model.postprocess)
        row["eval_seconds"] = row.pop("seconds")
        out["val"] = row
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    p.add_argument("--eval-every", type=float, default=15.0, metavar="MIN",
                   help="evaluate every MIN training minutes (0: only at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=DEFAULT_DSB, help="DSB2018 folder with val_ids.txt")
    p.add_argument("--out", default="/tmp/train_dsb", help="folder for weights, logs, curve")
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                   help="Config overrides, e.g. BACKBONE=resnet50 IMAGE_MIN_SCALE=1")
    p.add_argument("--val-limit", type=int, default=None,
                   help="evaluate on the first N val ids only (ablations)")
    p.add_argument("--curve-limit", type=int, default=None, metavar="N",
                   help="score the curve points on the first N val ids and all val ids "
                        "(or --val-limit) once more at the end (saves evaluation time)")
    p.add_argument("--train-limit", type=int, default=None, help="first N training ids only")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="hold N of the training ids aside (stratified by image_groups.tsv, "
                        "fixed split): the curve is scored on them (tuning), the val ids are "
                        "scored once at the end; the split is written to OUT/holdout_ids.txt")
    p.add_argument("--workers", type=int, default=2, help="loader threads")
    p.add_argument("--augment", choices=["light", "nucleus", "strong", "none"], default="light",
                   help="light: flips and 90-degree turns (the recipe); nucleus: also small "
                        "rotations, brightness/contrast, blur, hue; strong: also scale jitter "
                        "0.8-1.25 and wider ranges (mrcnn_nuclei.data.augment)")
    p.add_argument("--no-val", action="store_true",
                   help="with --holdout: score the held-out ids only, not the val ids (short "
                        "ablations; the val ids are scored once per recipe change)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="also stop after N training steps (step-matched ablations on a busy "
                        "machine; a LEARNING_RATE_DECAY then runs over the N steps, not over the minutes)")
    p.add_argument("--eval-untrained", action="store_true",
                   help="also score the untrained model (minute 0)")
    p.add_argument("--tune", action="store_true",
                   help="with --holdout: tune the model folder's post-processing (mask and score "
                        "thresholds, minimum size) on the held-out ids, write it to the folder "
                        "and score the val ids once more with it")
    p.add_argument("--tune-min-confidence", type=float, default=0.3, metavar="C",
                   help="with --tune: detection confidence the tuning cache is made at (0.3)")
    args = p.parse_args(argv)
    if args.no_val and not args.holdout:
        p.error("--no-val needs --holdout N (the curve would have no ids to score)")
    if args.tune and not args.holdout:
        p.error("--tune needs --holdout N (post-processing is tuned on held-out training ids, "
                "never on val)")

    from mrcnn_nuclei import weights
    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.recipes import (DSBScratchConfig, config_with, format_curve, holdout_ids,
                                      read_image_groups, train_budgeted)

    if not os.path.isdir(args.dataset):
        raise SystemExit(f"--dataset {args.dataset}: not a folder; pass the DSB2018 stage-1 "
                         "folder holding stage1_train/ and val_ids.txt")
    overrides = parse_overrides(args.set)
    overrides["SEED"] = args.seed
    config = config_with(DSBScratchConfig, **overrides)

    train_ds = DSBDataset().load(args.dataset, subset="train")
    train_names = [info["id"] for info in train_ds.image_info]
    if args.train_limit:
        train_names = train_names[: args.train_limit]
    held = []
    if args.holdout:
        groups_tsv = os.path.join(args.dataset, "image_groups.tsv")
        groups = read_image_groups(groups_tsv) if os.path.exists(groups_tsv) else {}
        train_names, held = holdout_ids(train_names, args.holdout, groups)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "holdout_ids.txt"), "w") as f:
            f.write("\n".join(held) + "\n")
    if args.train_limit or held:
        train_ds = DSBDataset().load(args.dataset, ids=train_names)
    train_ds.prepare()
    val_names = [info["id"] for info in DSBDataset().load(args.dataset, subset="val").image_info]
    if args.val_limit:
        val_names = val_names[: args.val_limit]
    # one evaluation dataset: the held-out ids (if any) first, then the val ids
    val_ds = DSBDataset().load(args.dataset, ids=held + val_names)
    val_ds.prepare()
    internal = {info["id"]: i for i, info in enumerate(val_ds.image_info)}
    val_ids = [internal[n] for n in val_names]
    final_ids = None
    if held:
        final_ids = None if args.no_val else val_ids
        val_ids = [internal[n] for n in held][: args.curve_limit or None]
    elif args.curve_limit:
        final_ids = val_ids
        val_ids = final_ids[: args.curve_limit]

    augmentation = None
    if args.augment != "none":
        from mrcnn_nuclei.data.augment import default_augmentation

        augmentation = default_augmentation(args.augment)
    eval_at = []
    if args.eval_every > 0:
        k = 1
        while k * args.eval_every < args.minutes - 1e-9:
            eval_at.append(k * args.eval_every)
            k += 1
    print(f"train ids: {len(train_ds.image_ids)}  curve ids: {len(val_ids)}"
          f"{' (held out)' if held else ''}  final ids: {len(final_ids or [])}  budget: {args.minutes} min  "
          f"evaluations at {eval_at + [args.minutes]} min\noverrides: {overrides}", flush=True)
    t0 = time.time()
    model, curve = train_budgeted(config, train_ds, val_ds, args.minutes, args.out,
                                  eval_at=eval_at, val_ids=val_ids, augmentation=augmentation,
                                  workers=args.workers, eval_untrained=args.eval_untrained,
                                  final_val_ids=final_ids, max_steps=args.max_steps)
    wall = time.time() - t0
    path = weights.save_weights(model.keras_model, os.path.join(args.out, "dsb_scratch_final"),
                                config=config)
    eval_s = sum(row.get("eval_seconds", 0.0) + row.get("final", {}).get("eval_seconds", 0.0)
                 + row.get("raw_weights", {}).get("eval_seconds", 0.0) for row in curve)
    folder = save_recipe_model(model, config, os.path.join(args.out, "model"))
    print(f"\ncurve on {len(val_ids)} {'held-out' if held else 'val'} ids:\n"
          + format_curve(curve))
    if "raw_weights" in curve[-1]:
        row = dict(curve[-1], **curve[-1]["raw_weights"])
        print(f"\nthe same ids, raw weights of the last step instead of their average:\n"
              + format_curve([row]))
    if final_ids is not None:
        row = dict(curve[-1], **curve[-1]["final"])
        print(f"\nfinal on {len(final_ids)} val ids:\n" + format_curve([row]))
    tuned = tune_folder(folder, args, val_names if final_ids is not None else None) \
        if args.tune else None
    if tuned and "val" in tuned:
        row = dict(curve[-1], **tuned["val"])
        print(f"\nfinal on {len(final_ids)} val ids, post-processing tuned on the held-out ids "
              f"{tuned['postprocess']}:\n" + format_curve([row]))
    print(f"\nwall clock {wall / 60:.1f} min (evaluation {eval_s / 60:.1f} min); weights: {path}"
          f"\nmodel folder (weights, config, post-processing): {folder}")
    with open(os.path.join(args.out, "curve.json"), "w") as f:
        json.dump({"args": vars(args), "overrides": {k: repr(v) for k, v in overrides.items()},
                   "curve": curve, "tuned": tuned, "wall_seconds": wall}, f, indent=2)
    return curve


if __name__ == "__main__":
    main()
