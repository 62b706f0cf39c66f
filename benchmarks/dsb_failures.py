"""Where a model folder loses its DSB score on DSB2018: failure tables as text and JSON.

Runs the model's soft detection once per image into a cache (``--cache``, by default
``MODEL/detections/<ids>``; later runs and ``tune_postprocess.py`` reuse it), applies the
folder's post-processing (``postprocess.json``, or the ``--mask-threshold/--score-threshold/
--min-size`` given) and prints the tables of :mod:`mrcnn_nuclei.diagnostics`: TP/FP/FN and the
score lost (by FP/FN; by no detection / missed nucleus / mask not sharp enough) per IoU
threshold, missed nuclei by size, merges and splits, boundary error, and all of it by image type
and image group; the worst images last. Writes ``failures.txt`` and ``failures.json`` to
``--out`` (default ``MODEL/diagnostics/<ids>``).

    python benchmarks/dsb_failures.py --model runs/dsb60/model --ids holdout
    python benchmarks/dsb_failures.py --model runs/dsb60/model --ids val
    python benchmarks/dsb_failures.py --model M --ids file --ids-file my_ids.txt

``--ids holdout``: the held-out tuning ids of ``train_dsb.py --holdout N`` - the
``holdout_ids.txt`` written beside the model folder when present, else
``mrcnn_nuclei.recipes.holdout_ids`` of the training ids with ``--holdout N`` (default 60).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

DEFAULT_DSB = str(_REPO.parent / "shared" / "data" / "dsb2018_stage1_train")


# ------------------------------------------------------------------ shared with tune_postprocess
def add_common_arguments(p):
    """--model, --dataset, --ids, --ids-file, --holdout, --cache, --recache, --min-confidence."""
    p.add_argument("--model", required=True, help="model folder (mrcnn_nuclei.save_model)")
    p.add_argument("--dataset", default=DEFAULT_DSB,
                   help="DSB2018 folder holding stage1_train/, val_ids.txt, image_groups.tsv")
    p.add_argument("--ids", choices=["val", "holdout", "file", "all"], default="holdout",
                   help="which images: the 68 val ids, the held-out training ids (default), an "
                        "id file (--ids-file) or every image")
    p.add_argument("--ids-file", default=None, help="one image id per line (with --ids file)")
    p.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="held-out size for --ids holdout when no holdout_ids.txt lies beside "
                        "the model folder (default 60)")
    p.add_argument("--limit", type=int, default=None, help="first N of the chosen ids only")
    p.add_argument("--cache", default=None,
                   help="detection cache folder (default MODEL/detections/<ids>)")
    p.add_argument("--recache", action="store_true", help="run the detection again")
    p.add_argument("--min-confidence", type=float, default=None, metavar="C",
                   help="cache with DETECTION_MIN_CONFIDENCE=C (lower than the model's, to "
                        "sweep lower score thresholds; the model's own value still applies "
                        "to what its post-processing keeps)")
    p.add_argument("--progress", action="store_true", help="progress bars")


def select_ids(args):
    """(dataset id strings, tag naming the selection)."""
    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.datasets.dsb import read_id_list

    root = args.dataset
    if args.ids == "file":
        if not args.ids_file:
            raise SystemExit("--ids file needs --ids-file PATH (one image id per line)")
        names, tag = read_id_list(args.ids_file), "file_" + Path(args.ids_file).stem
    elif args.ids == "val":
        names = [i["id"] for i in DSBDataset().load(root, subset="val").image_info]
        tag = "val"
    elif args.ids == "all":
        names = [i["id"] for i in DSBDataset().load(root).image_info]
        tag = "all"
    else:
        beside = Path(args.model).resolve().parent / "holdout_ids.txt"
        if args.holdout is None and beside.is_file():
            names, tag = read_id_list(str(beside)), "holdout"
            print(f"held-out ids: {beside} ({len(names)})")
        else:
            from mrcnn_nuclei.recipes import holdout_ids, read_image_groups

            n = 60 if args.holdout is None else args.holdout
            train = [i["id"] for i in DSBDataset().load(root, subset="train").image_info]
            tsv = Path(root) / "image_groups.tsv"
            groups = read_image_groups(str(tsv)) if tsv.is_file() else {}
            names, tag = holdout_ids(train, n, groups)[1], f"holdout{n}"
    if args.limit:
        names, tag = names[: args.limit], f"{tag}_first{args.limit}"
    return list(names), tag


def cached_entries(args, names, tag):
    """Load the dataset of ``names``, fill the cache, return (entries, manifest, cache folder)."""
    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.detection_cache import ensure_cache, load_cache

    conf = "" if args.min_confidence is None else f"_conf{args.min_confidence:g}"
    cache = args.cache or os.path.join(args.model, "detections", tag + conf)
    ds = DSBDataset().load(args.dataset, ids=names)
    ds.prepare()
    overrides = {} if args.min_confidence is None else \
        {"DETECTION_MIN_CONFIDENCE": float(args.min_confidence)}
    t0 = time.perf_counter()
    _, manifest = ensure_cache(args.model, ds, cache, overwrite=args.recache,
                               progress=args.progress, **overrides)
    print(f"detections: {cache} ({len(names)} images, {time.perf_counter() - t0:.1f} s)")
    full = [n for n in manifest.get("filled_detection_max_instances", []) if n in set(names)]
    if full:
        print(f"warning: {len(full)} image(s) filled DETECTION_MAX_INSTANCES (first {full[0]}): "
              "score thresholds below the cache's confidence may differ there")
    return load_cache(cache, names), manifest, cache


def folder_settings(model_folder):
    """(PostProcess of the folder, its config's DETECTION_MIN_CONFIDENCE)."""
    from mrcnn_nuclei.modelfolder import POSTPROCESS_NAME, PostProcess, inference_config_for

    path = os.path.join(model_folder, POSTPROCESS_NAME)
    settings = PostProcess()
    if os.path.exists(path):
        with open(path) as f:
            settings = PostProcess.from_dict(json.load(f), path)
    conf = float(inference_config_for(model_folder).DETECTION_MIN_CONFIDENCE)
    return settings, conf


def write_text(path, text):
    from mrcnn_nuclei.fileio import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------- main
def diagnose_entries(entries, settings, model_confidence=0.0):
    """Per-image records of :func:`mrcnn_nuclei.diagnostics.diagnose_image` after
    ``settings`` (a PostProcess) on cached detections; detections below ``model_confidence``
    (the model folder's DETECTION_MIN_CONFIDENCE, for caches made with a lower one) dropped."""
    from mrcnn_nuclei.detection_cache import cached_detection, sweep_image
    from mrcnn_nuclei.diagnostics import diagnose_image, image_type
    from mrcnn_nuclei.metrics import masks_to_label

    eff = settings.replace(score_threshold=max(float(settings.score_threshold),
                                               float(model_confidence)))
    records = []
    for e in entries:
        if eff.fill_holes:  # the package's own path (slower: full [H, W, N] stacks)
            r = cached_detection(e, eff.mask_threshold)
            masks, scores, _ = eff.apply(r, tuple(int(v) for v in e["shape"]))
            label = masks_to_label(masks)
        else:  # the same label image painted from the cached crops (tests: equal to apply)
            (_, label, scores), = sweep_image(e, (eff.mask_threshold,), (eff.score_threshold,),
                                              (eff.min_size,), eff.overlap)
        rec = diagnose_image(e["gt"], label, scores)
        rec.update(image_id=e["image_id"], group=e["group"] or None,
                   type=image_type(e["group"] or None))
        records.append(rec)
    return records, eff


def worst_images(records, n=10):
    """Text lines: the ``n`` images with the lowest DSB score."""
    import numpy as np

    rows = sorted(records, key=lambda r: r["dsb"])[:n]
    lines = [f"{'image':<18}{'group':<16}{'DSB':>7}{'GT':>6}{'pred':>6}{'FP.5':>6}{'FN.5':>6}"
             f"{'merge':>6}{'split':>6}"]
    for r in rows:
        lines.append(f"{r['image_id'][:16]:<18}{str(r['group'])[:15]:<16}{r['dsb']:>7.3f}"
                     f"{r['n_gt']:>6d}{r['n_pred']:>6d}{int(np.asarray(r['fp'])[0]):>6d}"
                     f"{int(np.asarray(r['fn'])[0]):>6d}{r['merges']:>6d}{r['splits']:>6d}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--mask-threshold", type=float, default=None)
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--min-size", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for failures.txt / failures.json "
                                               "(default MODEL/diagnostics/<ids>)")
    p.add_argument("--compare", default=None, metavar="FAILURES_JSON",
                   help="an earlier failures.json (e.g. of the recipe before a change): print "
                        "the key figures side by side")
    args = p.parse_args(argv)

    from mrcnn_nuclei.diagnostics import (format_comparison, format_report, summarize,
                                          to_jsonable)

    names, tag = select_ids(args)
    entries, manifest, cache = cached_entries(args, names, tag)
    settings, conf = folder_settings(args.model)
    settings = settings.replace(mask_threshold=args.mask_threshold,
                                score_threshold=args.score_threshold, min_size=args.min_size)
    t0 = time.perf_counter()
    records, eff = diagnose_entries(entries, settings, conf)
    summary = summarize(records)
    seconds = time.perf_counter() - t0
    head = (f"model {os.path.abspath(args.model)}\nids {tag}: {len(names)} images; "
            f"post-processing {eff.to_dict()} (model DETECTION_MIN_CONFIDENCE {conf:g})\n")
    text = head + "\n" + format_report(summary) + "\n\nWorst images\n" + \
        "\n".join(worst_images(records)) + f"\n\n(analysis {seconds:.1f} s)\n"
    if args.compare:
        with open(args.compare) as f:
            earlier = json.load(f)
        if earlier.get("image_ids") != names:
            print(f"warning: {args.compare} covers other images than these {len(names)}")
        text += (f"\nCompared with {args.compare} ({earlier.get('model')}, post-processing "
                 f"{earlier.get('post_processing')})\n"
                 + format_comparison(earlier["summary"], to_jsonable(summary),
                                     ("earlier", "this")) + "\n")
    print(text)
    out = args.out or os.path.join(args.model, "diagnostics", tag)
    per_image = [{k: r[k] for k in ("image_id", "group", "type", "dsb", "n_gt", "n_pred", "tp",
                                    "fp", "fn", "merges", "splits", "size_n", "size_missed",
                                    "matched", "iou_sum")} for r in records]
    write_text(os.path.join(out, "failures.txt"), text)
    write_text(os.path.join(out, "failures.json"), json.dumps(to_jsonable({
        "model": os.path.abspath(args.model), "ids": tag, "image_ids": names,
        "cache": cache, "post_processing": eff.to_dict(), "model_min_confidence": conf,
        "summary": summary, "per_image": per_image}), indent=1))
    print(f"written: {out}/failures.txt, failures.json")
    return summary


if __name__ == "__main__":
    main()
