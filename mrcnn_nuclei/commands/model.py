"""``mrcnn-nuclei info`` (what a model folder or weights file holds, without building a model) and
``mrcnn-nuclei save-model`` (a training checkpoint and its config -> a model folder with
post-processing settings, :func:`mrcnn_nuclei.modelfolder.save_model`)."""

from __future__ import annotations

import json
import os

__all__ = ["add_info_arguments", "run_info", "add_save_model_arguments", "run_save_model",
           "describe"]


def describe(path):
    """Dict of what ``path`` (model folder or weights file) holds: ``weights``, ``kind``
    (legacy / native), ``config`` (its file and main values, or None) and ``postprocess``."""
    from ..modelfolder import POSTPROCESS_NAME, PostProcess, _weights_in
    from ..weights import file_kind, find_config_beside

    weights, folder = _weights_in(path)
    out = {"weights": weights, "kind": file_kind(weights), "config": None,
           "postprocess": PostProcess().to_dict(), "postprocess_file": None}
    found = find_config_beside(weights)
    if found:
        with open(found) as f:
            values = json.load(f).get("values", {})
        keep = ("NAME", "BACKBONE", "NORM", "NUM_CLASSES", "IMAGE_RESIZE_MODE", "IMAGE_MIN_DIM",
                "IMAGE_MAX_DIM", "IMAGE_MIN_SCALE", "DETECTION_MIN_CONFIDENCE",
                "DETECTION_MAX_INSTANCES")
        out["config"] = {"file": found, **{k: values.get(k) for k in keep if k in values}}
    saved = os.path.join(folder, POSTPROCESS_NAME)
    if os.path.exists(saved):
        with open(saved) as f:
            out["postprocess"] = PostProcess.from_dict(json.load(f), saved).to_dict()
        out["postprocess_file"] = saved
    return out


def add_info_arguments(p):
    p.add_argument("model", metavar="PATH", help="model folder or weights file")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def run_info(args):
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return info
    print(f"weights      {info['weights']} ({info['kind']})")
    if info["config"]:
        cfg = dict(info["config"])
        print(f"config       {cfg.pop('file')}")
        for k, v in cfg.items():
            print(f"  {k:<26} {v}")
    else:
        print("config       none found (<stem>.json beside the file or config.json in its folder)")
    print(f"postprocess  {info['postprocess_file'] or 'defaults'}")
    for k, v in info["postprocess"].items():
        print(f"  {k:<26} {v}")
    return info


def add_save_model_arguments(p):
    p.add_argument("--weights", required=True,
                   help="weights file (its config beside), model folder or 'last'")
    p.add_argument("--logs", default="logs", help="where 'last' looks (default logs)")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--min-size", type=int, default=None, help="smallest nucleus in pixels")
    p.add_argument("--overlap", choices=("score", "area"), default=None,
                   help="who gets a pixel covered by several masks (default score)")
    p.add_argument("--mask-threshold", type=float, default=None)
    p.add_argument("--fill-holes", action="store_true", default=None)
    p.add_argument("--allow-partial-weights", action="store_true")
    return p


def run_save_model(args):
    from ..modelfolder import load_model, save_model
    from .evaluate import resolve_weights

    path = resolve_weights(args.weights, args.logs)
    if path is None:
        raise SystemExit("save-model: --weights=none has nothing to save")
    model = load_model(path, allow_partial=args.allow_partial_weights)
    settings = model.postprocess.replace(
        score_threshold=args.score_threshold, min_size=args.min_size, overlap=args.overlap,
        mask_threshold=args.mask_threshold, fill_holes=args.fill_holes)
    folder = save_model(model, args.out, settings)
    print(f"model folder {folder}: weights, config and post-processing {settings.to_dict()}")
    return folder
