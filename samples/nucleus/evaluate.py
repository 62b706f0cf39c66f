"""Evaluate a nucleus Mask R-CNN on a dataset subset: every metric, per image and on average.

Usage::

    python samples/nucleus/evaluate.py --dataset=../shared/data/dsb2018_stage1_train --subset=val \\
        --weights=last --logs=logs --out=eval_out [--limit N] [--overlays] [--min-size 0]
    python samples/nucleus/evaluate.py --dataset=synthetic --subset=val --weights=none \\
        --logs=logs --out=eval_smoke --limit 4

A thin wrapper over :mod:`mrcnn_nuclei.commands.evaluate` (the same as ``mrcnn-nuclei
evaluate``; ``--help`` lists the options and the files written); the loop is
:func:`mrcnn_nuclei.evaluation.evaluate_dataset`.
"""

from __future__ import annotations

import os
import sys

_REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
if _REPO not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _REPO)

from mrcnn_nuclei.commands.evaluate import (build_dataset, build_model,  # noqa: E402,F401
                                            evaluate_dataset, inference_config, main,
                                            resolve_weights)

if __name__ == "__main__":
    main(prog="evaluate.py")
