"""Mask R-CNN for nuclei: train and detect from the command line (Matterport's nucleus CLI and more).

Quick start on generated nuclei (no download, a few minutes on a laptop CPU):

    python samples/nucleus/train.py train --dataset=synthetic --weights=none
    python samples/nucleus/train.py detect --dataset=synthetic --weights=last

Kaggle DSB2018 stage 1 (folder holding stage1_train/ and val_ids.txt):

    python samples/nucleus/train.py train --dataset=/path/to/dsb2018 --subset=train --weights=coco
    python samples/nucleus/train.py train --dataset=/path/to/dsb2018 --weights=last   # resume
    python samples/nucleus/train.py detect --dataset=/path/to/dsb2018 --subset=val --weights=last

Matterport's familiar entry point, a thin wrapper over :mod:`mrcnn_nuclei.commands.nucleus` (the
same code as ``mrcnn-nuclei train|detect``); checkpoints default to ``logs/`` and detect results
to ``results/nucleus/`` of this checkout.  ``--help`` on each command lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_REPO))

from mrcnn_nuclei.commands import nucleus as _commands  # noqa: E402
from mrcnn_nuclei.commands.nucleus import (SyntheticConfig, cmd_detect,  # noqa: E402,F401
                                           cmd_train, load_dataset, make_config, overlay_image)

DEFAULT_LOGS = str(_REPO / "logs")
DEFAULT_RESULTS = str(_REPO / "results" / "nucleus")


def build_parser():
    """The argparse parser of ``train`` and ``detect`` (folders of this checkout as defaults)."""
    return _commands.build_parser(default_logs=DEFAULT_LOGS, default_results=DEFAULT_RESULTS)


def main(argv=None):
    """Entry point: parse ``argv`` and run the command; returns its result."""
    return _commands.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
