"""Tune a model folder's post-processing (mask threshold, score threshold, minimum size) on
cached detections: the sweep table and the best setting; ``--write`` stores it in the folder.

The network runs once per image (``detect_soft``, cached in ``--cache``, by default
``MODEL/detections/<ids>``, shared with ``dsb_failures.py``); every setting is then scored from
the cache (DSB score, AJI, PQ, F1 and COCO mask AP) exactly as
``mrcnn_nuclei.evaluate_dataset`` would score the folder with that ``postprocess.json``.
Tune on held-out TRAINING ids (``--ids holdout``, the default), never on val.

    python benchmarks/tune_postprocess.py --model runs/dsb60/model --ids holdout
    python benchmarks/tune_postprocess.py --model runs/dsb60/model --ids holdout \\
        --min-confidence 0.3 --write          # also score thresholds 0.3-0.5; store the best

Score thresholds below the folder config's DETECTION_MIN_CONFIDENCE only exist in a cache made
with ``--min-confidence``; such a setting cannot be written to ``postprocess.json`` alone (the
graph drops those detections first), so ``--write`` takes the best setting at or above the
folder's value and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsb_failures import (add_common_arguments, cached_entries, folder_settings,  # noqa: E402
                          select_ids, write_text)


def _floats(text):
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--mask-thresholds", type=_floats,
                   default=(0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7))
    p.add_argument("--score-thresholds", type=_floats,
                   default=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
    p.add_argument("--min-sizes", type=_ints, default=(0, 10, 20, 40))
    p.add_argument("--key", default="dsb", choices=["dsb", "aji", "pq", "f1", "AP"],
                   help="what 'best' maximises (default the DSB score)")
    p.add_argument("--no-ap", action="store_true", help="skip the COCO AP of every setting")
    p.add_argument("--top", type=int, default=20, help="rows printed (best first)")
    p.add_argument("--write", action="store_true",
                   help="store the best setting in MODEL/postprocess.json (atomically)")
    p.add_argument("--out", default=None, help="folder for sweep.json / sweep.txt (default "
                                               "MODEL/diagnostics/<ids>)")
    args = p.parse_args(argv)

    from mrcnn_nuclei.detection_cache import best_setting, format_sweep, sweep
    from mrcnn_nuclei.diagnostics import to_jsonable
    from mrcnn_nuclei.modelfolder import update_postprocess

    if args.ids == "val":
        if args.write:
            raise SystemExit("--write with --ids val: settings chosen on the val ids would be "
                             "scored on them again; tune on held-out training ids (--ids "
                             "holdout) and score val once")
        print("note: sweeping the val ids (for a report only; tune on --ids holdout)")
    names, tag = select_ids(args)
    entries, manifest, cache = cached_entries(args, names, tag)
    current, model_conf = folder_settings(args.model)
    cache_conf = float(manifest.get("config", {}).get("DETECTION_MIN_CONFIDENCE", model_conf))
    if args.key == "AP" and args.no_ap:
        raise SystemExit("--key AP needs the AP: drop --no-ap")
    scores = tuple(s for s in args.score_thresholds if s >= cache_conf - 1e-9)
    dropped = sorted(set(args.score_thresholds) - set(scores))
    if dropped:
        print(f"score thresholds {dropped} are below the cache's DETECTION_MIN_CONFIDENCE "
              f"{cache_conf:g} (no detections there; cache with --min-confidence to sweep them)")
        scores = scores or (cache_conf,)
    t0 = time.perf_counter()
    result = sweep(entries, args.mask_thresholds, scores, args.min_sizes, current.overlap,
                   ap=not args.no_ap, progress=args.progress)
    seconds = time.perf_counter() - t0
    # the folder's current setting (same cache; its score threshold at least the model's)
    now = current.replace(score_threshold=max(float(current.score_threshold), model_conf))
    base = sweep(entries, (now.mask_threshold,), (now.score_threshold,), (now.min_size,),
                 current.overlap, ap=not args.no_ap)["rows"][0]
    best = best_setting(result["rows"], args.key)
    writable = best_setting(result["rows"], args.key,
                            min_score_threshold=model_conf if cache_conf < model_conf else None)

    def line(r):
        ap = f", AP {r['AP']:.4f}" if "AP" in r else ""
        return (f"mask_threshold {r['mask_threshold']:g}, score_threshold "
                f"{r['score_threshold']:g}, min_size {r['min_size']}: DSB {r['dsb']:.4f}, AJI "
                f"{r['aji']:.4f}, PQ {r['pq']:.4f}{ap}")

    text = "\n".join(part for part in [
        f"model {os.path.abspath(args.model)}; ids {tag}: {len(entries)} images; cache {cache} "
        f"(DETECTION_MIN_CONFIDENCE {cache_conf:g}; the folder's {model_conf:g})",
        f"{len(result['rows'])} settings scored in {seconds:.1f} s (overlap "
        f"{current.overlap!r}; fill_holes not swept)", "",
        format_sweep(result, args.key, args.top), "",
        "current: " + line(base) + (" (fill_holes=True not applied here)"
                                    if current.fill_holes else ""),
        "best:    " + line(best),
        ("writable (score_threshold >= the folder's DETECTION_MIN_CONFIDENCE): " + line(writable)
         if writable is not best else None),
        f"gain over current: {best[args.key] - base[args.key]:+.4f} {args.key}"] if part is not None)
    print(text)
    out = args.out or os.path.join(args.model, "diagnostics", tag)
    write_text(os.path.join(out, "sweep.txt"), text + "\n")
    write_text(os.path.join(out, "sweep.json"), json.dumps(to_jsonable({
        "model": os.path.abspath(args.model), "ids": tag, "image_ids": names, "cache": cache,
        "cache_min_confidence": cache_conf, "model_min_confidence": model_conf,
        "key": args.key, "current": base, "best": best, "writable": writable,
        "rows": result["rows"], "seconds": seconds}), indent=1))
    if args.write:
        new = update_postprocess(args.model, mask_threshold=writable["mask_threshold"],
                                 score_threshold=writable["score_threshold"],
                                 min_size=writable["min_size"], fill_holes=False)
        print(f"wrote {os.path.join(args.model, 'postprocess.json')}: {new.to_dict()}")
    return {"rows": result["rows"], "best": best, "writable": writable, "current": base}


if __name__ == "__main__":
    main()
