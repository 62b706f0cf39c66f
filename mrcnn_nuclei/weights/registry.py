"""Known weight files (Matterport's COCO file, the Keras-1 ImageNet ResNet-50): where they are
published, their checksums, and where on disk they are looked for.  Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["WEIGHT_FILES", "ENV_WEIGHTS_DIR", "weights_search_dirs", "find_weights_file",
           "verify_weights_file"]


#: Known weight files: file name, where it is published, checksum.
WEIGHT_FILES = {
    "coco": {
        "filename": "mask_rcnn_coco.h5",
        "url": "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        "published": "Matterport Mask R-CNN release v2.0, asset mask_rcnn_coco.h5 (MIT license)",
        "size": 257557808,
        "sha256": "ee7eeb918fe544c8bc1fd0f1f9588bf9f8e0e1055a4d12a98f83fa83c5f8b36d",
    },
    "imagenet": {
        "filename": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "url": "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
               "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "published": "fchollet/deep-learning-models release v0.2 (Keras-1-era ImageNet ResNet-50, "
                     "no top)",
        "md5": "a268eb855778b3df3c7506639542a6af",
    },
}


ENV_WEIGHTS_DIR = "MRCNN_NUCLEI_WEIGHTS"


_REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


def _missing_file_message(path):
    """Message for a weights ``path`` that does not exist: the path and where to obtain a file."""
    name = os.path.basename(path)
    for kind, info in WEIGHT_FILES.items():
        if name == info["filename"]:
            checksum = (f"sha256 {info['sha256']}" if "sha256" in info else f"md5 {info['md5']}")
            return (f"weights file not found: {path}. {name} ({kind} weights) is published as "
                    f"{info['published']}: {info['url']} ({checksum}); download it to that path "
                    f"or to {_REPO_WEIGHTS_DIR / name} (found by --weights={kind}). Nothing is "
                    "downloaded automatically; see weights/README.md.")
    coco = WEIGHT_FILES["coco"]
    return (f"weights file not found: {path}. Pass an existing file: a checkpoint written by "
            "MaskRCNN.train() (model_dir/<name><YYYYmmddTHHMMSS>/mask_rcnn_<name>_<epoch>"
            ".weights.h5; MaskRCNN.find_last() returns the newest) or by save_weights(), or "
            f"Matterport's {coco['filename']} from {coco['url']} (put it in {_REPO_WEIGHTS_DIR}; "
            "see weights/README.md).")


def weights_search_dirs():
    """Folders searched by :func:`find_weights_file`, in order."""
    dirs = []
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_REPO_WEIGHTS_DIR)
    dirs.append(Path.home() / ".keras" / "models")
    return dirs


def find_weights_file(kind):
    """Path of a known weights file on disk; never downloads.

    kind: "coco" (``mask_rcnn_coco.h5``) or "imagenet"
        (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``).
    Looks in $MRCNN_NUCLEI_WEIGHTS (a folder, or the file itself), the repository's
    ``weights/`` folder, then ``~/.keras/models``.  Raises FileNotFoundError naming every place
    looked, where to put the file and where it is published.
    """
    if kind not in WEIGHT_FILES:
        raise ValueError(f"kind={kind!r}: known weight files are {sorted(WEIGHT_FILES)}")
    info = WEIGHT_FILES[kind]
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env and os.path.isfile(env) and os.path.basename(env) == info["filename"]:
        return os.path.abspath(env)
    looked = []
    for folder in weights_search_dirs():
        candidate = folder / info["filename"]
        looked.append(str(candidate))
        if candidate.is_file():
            return str(candidate)
    checksum = (f"sha256 {info['sha256']}" if "sha256" in info else f"md5 {info['md5']}")
    raise FileNotFoundError(
        f"{info['filename']} ({kind} weights) not found. Looked in:\n  " + "\n  ".join(looked) +
        f"\nPut the file at {_REPO_WEIGHTS_DIR / info['filename']} (or in the folder named by "
        f"${ENV_WEIGHTS_DIR}). It is published as {info['published']}: {info['url']} "
        f"({checksum}). Nothing is downloaded automatically; see weights/README.md.")


def verify_weights_file(path, kind):
    """Check ``path`` against the published checksum of ``kind``; returns the hex digest.

    Raises ValueError naming the path and both digests when they differ.
    """
    info = WEIGHT_FILES[kind]
    algo = "sha256" if "sha256" in info else "md5"
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if value != info[algo]:
        raise ValueError(f"{path}: {algo} {value} differs from the published {info[algo]} of "
                         f"{info['filename']}; the download is incomplete or another file")
    return value
