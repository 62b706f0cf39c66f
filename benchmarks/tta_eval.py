"""Score a model folder on DSB2018 ids without and with test-time augmentation, same
post-processing: the TTA ablation of a trained recipe (no training).

Each row runs the network on every image (``--transforms`` copies per image with TTA: mirrored
copies detected in one call and merged back by :func:`mrcnn_nuclei.inference.tta.tta_detect`),
applies the folder's ``postprocess.json`` (mask threshold on the merged soft masks, score
threshold, minimum size, overlaps) and scores it as ``mrcnn_nuclei.evaluate_dataset`` does:
DSB score, AJI, PQ (means over images), COCO mask AP and AP50 (NumPy backend), seconds.

    python benchmarks/tta_eval.py --model runs/m120/model --ids holdout
    python benchmarks/tta_eval.py --model runs/m120/model --ids holdout \\
        --transforms orig,hflip,vflip,hvflip --min-runs 2 --min-runs 3

Decide on held-out training ids (``--ids holdout``, the default); score val once.
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

from dsb_failures import add_common_arguments, select_ids, write_text  # noqa: E402


def tta_detect_fn(model, settings, transforms, min_runs):
    """``image -> detection dict``: TTA over ``transforms``, merged instances found under at
    least ``min_runs`` transforms, masks at the folder's mask threshold."""
    from mrcnn_nuclei.inference.tta import tta_detect

    threshold = float(settings.mask_threshold)

    def detect(image):
        r = tta_detect(model, image, transforms=transforms,
                       merge_kwargs={"min_runs": int(min_runs)})
        r["masks"] = r["soft_masks"] >= threshold
        return r

    return detect


def score(detect, dataset, settings):
    """Summary of :func:`mrcnn_nuclei.evaluate_dataset` in the recipe's figures."""
    from mrcnn_nuclei.evaluation import evaluate_dataset

    t0 = time.perf_counter()
    s = evaluate_dataset(detect, dataset, postprocess=settings, coco_backend="numpy",
                         pannuke=False, verbose=0, check_images=False)
    row = {k: float(s["means"][k]) for k in ("dsb", "aji", "pq")}
    row.update(AP=float(s["coco"]["AP"]), AP50=float(s["coco"]["AP50"]),
               n_pred=int(s["totals"]["n_pred"]), seconds=round(time.perf_counter() - t0, 1))
    return row


def format_rows(rows):
    head = f"{'variant':<40} {'DSB':>6} {'AP':>6} {'AP50':>6} {'AJI':>6} {'PQ':>6} " \
           f"{'n_pred':>7} {'s':>7}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['variant']:<40} {r['dsb']:6.3f} {r['AP']:6.3f} {r['AP50']:6.3f} "
                     f"{r['aji']:6.3f} {r['pq']:6.3f} {r['n_pred']:7d} {r['seconds']:7.1f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--transforms", default="orig,hflip,vflip,hvflip",
                   help="comma-separated TTA transforms (mrcnn_nuclei.inference.tta: orig, "
                        "hflip, vflip, hvflip, hue)")
    p.add_argument("--min-runs", type=int, action="append", default=None,
                   help="keep merged instances found under at least this many transforms "
                        "(repeat for several rows; default 2)")
    p.add_argument("--no-plain", action="store_true", help="skip the row without TTA")
    p.add_argument("--out", default=None,
                   help="folder for tta.json / tta.txt (default MODEL/diagnostics/<ids>)")
    args = p.parse_args(argv)

    from mrcnn_nuclei.datasets import DSBDataset
    from mrcnn_nuclei.modelfolder import load_model

    transforms = tuple(t.strip() for t in args.transforms.split(",") if t.strip())
    min_runs = args.min_runs or [2]
    bad = [m for m in min_runs if not 1 <= m <= len(transforms)]
    if bad:
        raise SystemExit(f"--min-runs {bad[0]}: must be between 1 and the number of transforms "
                         f"({len(transforms)})")
    if args.ids == "val":
        print("note: scoring the val ids (report only; decide on --ids holdout)")
    names, tag = select_ids(args)
    ds = DSBDataset().load(args.dataset, ids=names)
    ds.prepare()
    model = load_model(args.model)
    settings = model.postprocess
    print(f"model {os.path.abspath(args.model)}; {tag}: {len(names)} images; "
          f"post-processing {settings.to_dict()}", flush=True)
    rows = []
    if not args.no_plain:
        rows.append({"variant": "no TTA", **score(model, ds, settings)})
        print(format_rows(rows[-1:]), flush=True)
    for m in min_runs:
        fn = tta_detect_fn(model, settings, transforms, m)
        rows.append({"variant": f"TTA {'+'.join(transforms)}, min_runs {m}",
                     **score(fn, ds, settings)})
        print(format_rows(rows[-1:]), flush=True)
    text = (f"model {os.path.abspath(args.model)}\nids {tag}: {len(names)} images; "
            f"post-processing {settings.to_dict()}\n\n{format_rows(rows)}\n")
    print("\n" + text)
    out = args.out or os.path.join(args.model, "diagnostics", tag)
    write_text(os.path.join(out, "tta.txt"), text)
    write_text(os.path.join(out, "tta.json"), json.dumps(
        {"model": os.path.abspath(args.model), "ids": tag, "image_ids": names,
         "post_processing": settings.to_dict(), "rows": rows}, indent=1))
    print(f"written: {out}/tta.txt, tta.json")
    return rows


if __name__ == "__main__":
    main()
