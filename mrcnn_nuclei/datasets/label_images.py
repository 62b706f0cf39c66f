"""Any folder of images paired with instance label images (0 = background, k > 0 = instance k).

``ds.load(image_dir, label_dir)`` pairs files by stem: ``a.png`` with ``a.tif``, ``a_label.png``,
``a_labels.tif``, ``a_mask.png``, ``a_masks.png``, ``a-label.png``, ``a_instances.tif``,
``a_seg.png``, ``a_gt.png`` (suffixes case-insensitive). Images and labels may share one folder;
files with a label suffix are then labels. Supported formats: PNG/JPEG/BMP via Pillow, TIFF via
tifffile (Pillow as fall-back). A label image may be ``[H, W]`` integers (any bit depth; integral
floats accepted) or an RGB(A) image where every distinct non-black colour is one instance.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path

import numpy as np

from ..data.convert import read_image, to_uint8
from ..data.dataset import Dataset

__all__ = ["LabelImageDataset", "LABEL_SUFFIXES", "read_label_image"]

logger = logging.getLogger(__name__)

SOURCE = "labels"
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
#: Stem suffixes that mark a label file (checked longest first, case-insensitive).
LABEL_SUFFIXES = ("_instances", "_labels", "_label", "_masks", "_mask", "-labels", "-label",
                  "-mask", "_seg", "_gt")


def _label_key(stem):
    low = stem.lower()
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def _image_size(path):
    """(H, W) of an image file from its header."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            shape = [s for s in shape if s not in (1,)] if len(shape) > 2 else list(shape)
            if len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4):
                shape = shape[1:]  # planar (C, H, W)
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read image file {path}: {exc}") from exc


def read_label_image(path):
    """Read an instance label file -> ``[H, W]`` int32 label image (0 = background).

    RGB(A) labels: each distinct non-black colour becomes one id (numbered in colour order).
    """
    array = read_image(path)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        rgb = array[:, :, :3].astype(np.int64)
        if (rgb[:, :, :1] == rgb).all():  # grey stored as RGB
            array = rgb[:, :, 0]
        else:
            packed = (rgb[:, :, 0] << 32) | (rgb[:, :, 1] << 16) | rgb[:, :, 2]
            _, inverse = np.unique(packed, return_inverse=True)
            array = inverse.reshape(packed.shape)   # black (packed 0) is the smallest -> id 0
            if packed.min() != 0:
                array = array + 1
    if array.ndim != 2:
        raise ValueError(f"label image {path} has shape {array.shape}; expected [H, W] instance "
                         "ids (or an RGB image with one colour per instance)")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"label image {path} holds non-integer values; save instance ids "
                             "as integers (uint16/int32)")
    if array.size and array.min() < 0:
        raise ValueError(f"label image {path} has negative values; 0 must be background")
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise ValueError(f"label image {path} has ids above 2**31-1")
    return array.astype(np.int32)


class LabelImageDataset(Dataset):
    """Images + instance label images: ``ds.load(image_dir, label_dir)`` then ``ds.prepare()``."""

    def load(self, image_dir, label_dir, pattern=None, skip_unpaired=False, channels=3, ids=None):
        """Register image/label pairs.

        image_dir, label_dir: folders (may be the same). pattern: glob for image file names
        (e.g. ``"*.tif"``; default every PNG/TIFF/JPEG/BMP). skip_unpaired: skip (and log)
        images without a label and labels without an image instead of raising.
        channels: of ``load_image``. ids: only these image stems (a list or an id file, one per
        line); ids without an image/label pair raise ValueError naming them. Returns ``self``.
        """
        image_dir, label_dir = Path(image_dir), Path(label_dir)
        for folder, what in ((image_dir, "image_dir"), (label_dir, "label_dir")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} not found: {folder}")
        same = image_dir.resolve() == label_dir.resolve()

        def listing(folder):
            return sorted(p for p in folder.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

        labels = {}
        for path in listing(label_dir):
            key, marked = _label_key(path.stem)
            if same and not marked:
                continue  # in a shared folder, only suffixed files are labels
            if key in labels:
                raise ValueError(f"two label files for image stem {key!r}: {labels[key]} and "
                                 f"{path}; keep one")
            labels[key] = path
        images = {}
        for path in listing(image_dir):
            if same and _label_key(path.stem)[1]:
                continue
            if pattern is not None and not fnmatch.fnmatch(path.name, pattern):
                continue
            if path.stem in images:
                raise ValueError(f"two image files with stem {path.stem!r}: {images[path.stem]} "
                                 f"and {path}; keep one")
            images[path.stem] = path
        if not images:
            raise ValueError(f"no image files in {image_dir}"
                             + (f" matching {pattern!r}" if pattern else "")
                             + f" (extensions {', '.join(IMAGE_EXTENSIONS)})")
        if ids is not None:
            from .dsb import check_ids_present, read_id_list

            source = str(ids) if isinstance(ids, (str, os.PathLike)) else "ids="
            wanted = set(read_id_list(ids, source))
            check_ids_present(sorted(wanted), set(images) & set(labels), source,
                              f"the image/label pairs of {image_dir} and {label_dir}")
            images = {k: v for k, v in images.items() if k in wanted}
            labels = {k: v for k, v in labels.items() if k in wanted}
        no_label = sorted(set(images) - set(labels))
        no_image = sorted(set(labels) - set(images)) if pattern is None else []
        if (no_label or no_image) and not skip_unpaired:
            parts = []
            if no_label:
                parts.append(f"{len(no_label)} image(s) without a label in {label_dir} (first: "
                             f"{images[no_label[0]]})")
            if no_image:
                parts.append(f"{len(no_image)} label(s) without an image in {image_dir} (first: "
                             f"{labels[no_image[0]]})")
            raise ValueError("; ".join(parts) + ". Name labels like the image (optionally with "
                             f"a suffix {', '.join(LABEL_SUFFIXES[:4])}, ...) or pass "
                             "skip_unpaired=True")
        if no_label or no_image:
            logger.warning("LabelImageDataset: skipped %d image(s) without a label and %d "
                           "label(s) without an image", len(no_label), len(no_image))
        self.skipped = [str(images[k]) for k in no_label] + [str(labels[k]) for k in no_image]
        pairs = sorted(set(images) & set(labels))
        if not pairs:
            raise ValueError(f"no image/label pairs between {image_dir} and {label_dir}")

        self.channel_count = int(channels)
        self.add_class(SOURCE, 1, "nucleus")
        for stem in pairs:
            size = _image_size(images[stem])
            label_size = _image_size(labels[stem])
            if size != label_size:
                raise ValueError(f"label {labels[stem]} is {label_size[0]}x{label_size[1]} but "
                                 f"image {images[stem]} is {size[0]}x{size[1]}; they must match")
            self.add_image(SOURCE, image_id=stem, path=str(images[stem]),
                           label_path=str(labels[stem]), height=size[0], width=size[1])
        return self

    def load_labels(self, image_id):
        """Label image ``[H, W]`` int32 as stored (ids need not be consecutive)."""
        info = self._info(image_id)
        labels = read_label_image(info["label_path"])
        if labels.shape != (info["height"], info["width"]):
            raise ValueError(f"label {info['label_path']} is {labels.shape[0]}x{labels.shape[1]} "
                             f"but image {info['path']} is {info['height']}x{info['width']}")
        return labels

    def load_mask(self, image_id):
        """Masks ``[H, W, N]`` bool, one per distinct non-zero label (ascending), ``[N]`` ones."""
        info = self._info(image_id)
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        labels = self.load_labels(image_id)
        ids = np.unique(labels)
        ids = ids[ids != 0]
        return labels[:, :, None] == ids, np.ones(len(ids), np.int32)

    def load_image(self, image_id):
        """Image ``[H, W, channel_count]`` uint8."""
        info = self._info(image_id)
        return to_uint8(read_image(info["path"]), channels=self.channel_count, path=info["path"])

    def check_image(self, image_id, channels=None):
        """Decode the image and its label file and compare sizes (no mask stack is built)."""
        from ..data.checks import check_image_and_labels

        return check_image_and_labels(self, image_id, channels, self.load_labels, SOURCE)

    def image_reference(self, image_id):
        """Path of the image file."""
        return self._info(image_id)["path"]
