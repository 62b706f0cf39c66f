"""Kaggle 2018 Data Science Bowl (BBBC038) stage-1 nuclei, in the original Kaggle layout.

Layout read by :meth:`DSBDataset.load`::

    <root>/stage1_train/<id>/images/<id>.png     RGBA (or RGB/grey) image
    <root>/stage1_train/<id>/masks/*.png         one binary PNG per nucleus, same size as the image
    <root>/val_ids.txt                           optional: ids of the validation split
    <root>/image_groups.tsv                      optional: image_id, group, n_masks

``root`` may also be the ``stage1_train`` folder itself (or any folder of ``<id>/images``).
Masks can instead come from a Kaggle run-length CSV (``stage1_train_labels.csv`` or the stage-1
solution: ``ImageId,EncodedPixels[,Height,Width,...]``; pixels numbered from 1, top to bottom then
left to right); see :func:`rle_decode`.

The real masks overlap by 1-2 px in a few images (e.g. ``72e8c49d...``). They are returned as
given (a pixel may be ``True`` in two masks); resolving overlaps is left to the consumer.
Images use source ``"nucleus"`` and class 1 ``"nucleus"``, as Matterport's nucleus sample.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.convert import read_image
from ..data.dataset import Dataset

__all__ = ["DSBDataset", "rle_decode", "read_rle_csv", "read_id_list", "check_ids_present",
           "read_image_groups"]

logger = logging.getLogger(__name__)

SOURCE = "nucleus"


def rle_decode(rle_string, shape):
    """Kaggle run-length string -> ``[H, W]`` bool mask.

    rle_string: ``"start length start length ..."``, starts 1-based, pixels numbered in
    column-major order (down the first column, then the next). Empty/None -> all False.
    shape: ``(H, W)``.
    """
    height, width = int(shape[0]), int(shape[1])
    size = height * width
    if rle_string is None or (isinstance(rle_string, float) and np.isnan(rle_string)):
        return np.zeros((height, width), bool)
    values = np.array(str(rle_string).split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError(f"run-length string has an odd number of values ({values.size}); "
                         "expected 'start length' pairs")
    starts, lengths = values[0::2] - 1, values[1::2]
    if values.size and (starts.min() < 0 or lengths.min() < 0 or (starts + lengths).max() > size):
        raise ValueError(f"run-length string runs outside an image of {height}x{width} pixels "
                         "(starts are 1-based; check Height/Width or the image size)")
    edges = np.zeros(size + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    flat = np.cumsum(edges[:-1]) > 0
    return flat.reshape((width, height)).T


def read_rle_csv(path):
    """Read a Kaggle run-length CSV -> ``{image_id: {"rles": [str], "shape": (H, W) or None}}``.

    Rows with an empty ``EncodedPixels`` add no mask. Insertion order follows the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run-length CSV not found: {path}")
    out = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "ImageId" not in fields or "EncodedPixels" not in fields:
            raise ValueError(f"{path}: needs the columns ImageId and EncodedPixels "
                             f"(found {fields})")
        has_shape = "Height" in fields and "Width" in fields
        for row in reader:
            entry = out.setdefault(row["ImageId"], {"rles": [], "shape": None})
            rle = (row["EncodedPixels"] or "").strip()
            if rle:
                entry["rles"].append(rle)
            if has_shape and row["Height"] and row["Width"]:
                entry["shape"] = (int(row["Height"]), int(row["Width"]))
    return out


def _image_root(root):
    """Folder holding the ``<id>/images`` folders, and the folder holding the split files."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DSB root folder not found: {root} (pass the folder that holds "
                                "stage1_train/, or stage1_train itself)")
    if (root / "stage1_train").is_dir():
        return root / "stage1_train", root
    return root, root.parent


def read_id_list(ids, what="ids="):
    """Image ids from a list or an id file (one per line; blank lines and ``#`` comments
    ignored). Raises FileNotFoundError (no file) or ValueError (empty list)."""
    return _read_ids(ids, what)


def check_ids_present(wanted, available, source, where):
    """Raise ValueError naming every id of ``wanted`` that is not in ``available``.

    source: where the ids come from (an id file or ``ids=``); where: the folder searched."""
    have = set(available)
    missing = [i for i in wanted if i not in have]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... (+{len(missing) - 10})" if len(missing) > 10
                                           else "")
        raise ValueError(f"{source} names {len(missing)} id(s) that are not in {where}: {shown}. "
                         "Fix the id list or point to the folder that holds them.")


def _read_ids(ids, what):
    if isinstance(ids, (str, os.PathLike)):
        path = Path(ids)
        if not path.is_file():
            raise FileNotFoundError(f"id file not found: {path} (one image id per line)")
        ids = [line.strip() for line in path.read_text().splitlines()]
        ids = [i for i in ids if i and not i.startswith("#")]
        what = str(path)
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError(f"empty id list ({what}): give at least one image id")
    return ids



def read_image_groups(path):
    """``{image_id: group}`` from an ``image_groups.tsv`` (tab separated, a header with
    ``image_id`` and ``group`` columns; DSB2018's size/colour groups such as ``256x256_gray``).
    ValueError naming the file when the header lacks them."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f, delimiter="\t")
        if not rows.fieldnames or not {"image_id", "group"} <= set(rows.fieldnames):
            raise ValueError(f"{path}: expected a tab-separated header with image_id and group "
                             f"columns, got {rows.fieldnames}")
        return {row["image_id"]: row["group"] for row in rows if row.get("image_id")}

class DSBDataset(Dataset):
    """DSB2018 stage-1 nuclei: ``ds.load(root, ids=None, subset=None)`` then ``ds.prepare()``."""

    def load(self, root, ids=None, subset=None, solution_csv=None, skip_empty=False, channels=3,
             require_masks=True, keep_empty=False):
        """Register DSB images.

        root: folder holding ``stage1_train/`` (or that folder itself). ids: list of ids or a path
        to an id file (one per line). subset: ``"val"`` = ids of ``root/val_ids.txt``,
        ``"train"`` = all others (not together with ``ids``). solution_csv: read masks from a
        Kaggle run-length CSV instead of ``masks/*.png``. skip_empty: skip images without masks
        (logged) instead of raising. channels: channels of ``load_image`` (default 3).
        require_masks: False registers images without masks too (test sets such as
        ``stage1_test``; their ``load_mask`` returns ``N = 0``). keep_empty: register images
        with no nuclei - a ``masks/`` folder that exists but holds no PNG, or an image the
        solution CSV lists without a mask - with ``N = 0`` masks (for evaluation); an image
        without a ``masks/`` folder still counts as one without ground truth. Returns ``self``.

        Every id of ``ids`` / ``val_ids.txt`` must be an image folder of the root, else
        ValueError names the missing ids.
        """
        image_root, split_root = _image_root(root)
        if ids is not None and subset is not None:
            raise ValueError("pass either ids= or subset=, not both (subset picks ids from "
                             "val_ids.txt)")
        present = sorted(p.name for p in image_root.iterdir() if (p / "images").is_dir())
        if ids is None:
            ids = present
            if not ids:
                raise ValueError(f"empty id list: no <id>/images folders in {image_root}")
        else:
            source = str(ids) if isinstance(ids, (str, os.PathLike)) else "ids="
            ids = _read_ids(ids, "ids=")
            check_ids_present(ids, present, source, image_root)
        if subset is not None:
            if subset not in ("train", "val"):
                raise ValueError(f"subset must be 'train' or 'val', got {subset!r}")
            candidates = [split_root / "val_ids.txt", image_root / "val_ids.txt"]
            val_file = next((c for c in candidates if c.is_file()), candidates[0])
            val_list = _read_ids(val_file, str(val_file))
            check_ids_present(val_list, present, val_file, image_root)
            val = set(val_list)
            ids = [i for i in ids if (i in val) == (subset == "val")]
            if not ids:
                raise ValueError(f"subset {subset!r} of {image_root} is empty (val ids from "
                                 f"{val_file})")
        groups = self._read_groups(split_root, image_root)
        labels = read_rle_csv(solution_csv) if solution_csv is not None else None

        self.channel_count = int(channels)
        self.add_class(SOURCE, 1, "nucleus")
        skipped = []
        for image_id in ids:
            folder = image_root / image_id
            image_path = folder / "images" / f"{image_id}.png"
            if not folder.is_dir():
                raise FileNotFoundError(f"image folder not found: {folder} (id {image_id!r})")
            if not image_path.is_file():
                raise FileNotFoundError(f"image file not found: {image_path}")
            if labels is not None:
                entry = labels.get(image_id) or {"rles": [], "shape": None}
                extra = {"rles": entry["rles"], "rle_shape": entry["shape"]}
                n_masks = len(entry["rles"])
                no_nuclei = image_id in labels  # listed with an empty EncodedPixels
                problem = f"{solution_csv} has no masks for image {image_id} ({folder})"
            else:
                mask_dir = folder / "masks"
                names = sorted(n for n in os.listdir(mask_dir) if n.lower().endswith(".png")) \
                    if mask_dir.is_dir() else []
                extra = {"mask_paths": [str(mask_dir / n) for n in names]}
                n_masks = len(names)
                no_nuclei = mask_dir.is_dir()
                problem = f"no mask PNGs in {mask_dir} (image {image_id})"
            if n_masks == 0 and require_masks and not (keep_empty and no_nuclei):
                if skip_empty:
                    skipped.append(image_id)
                    continue
                raise ValueError(f"{problem}; pass skip_empty=True to skip images without masks, "
                                 "keep_empty=True to keep images with no nuclei (empty masks/ "
                                 "folder) or require_masks=False for a test set")
            try:
                with Image.open(image_path) as im:
                    width, height = im.size
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"cannot read image file {image_path}: {exc}") from exc
            self.add_image(SOURCE, image_id=image_id, path=str(image_path), height=height,
                           width=width, group=groups.get(image_id), **extra)
        if skipped:
            logger.warning("DSBDataset: skipped %d image(s) without masks (first: %s)",
                           len(skipped), skipped[0])
        self.skipped = skipped
        return self

    @staticmethod
    def _read_groups(*folders):
        for folder in folders:
            path = Path(folder) / "image_groups.tsv"
            if path.is_file():
                with open(path, newline="") as f:
                    rows = csv.DictReader(f, delimiter="\t")
                    return {row["image_id"]: row.get("group") for row in rows
                            if row.get("image_id")}
        return {}

    def load_mask(self, image_id):
        """Masks ``[H, W, N]`` bool (as given; may overlap by 1-2 px) and ``[N]`` int32 ones."""
        info = self._info(image_id)
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        height, width = info["height"], info["width"]
        if "rles" in info:
            shape = info["rle_shape"] or (height, width)
            if tuple(shape) != (height, width):
                raise ValueError(f"run-length masks of {info['id']} are {shape[0]}x{shape[1]} but "
                                 f"the image {info['path']} is {height}x{width}")
            try:
                masks = [rle_decode(rle, shape) for rle in info["rles"]]
            except ValueError as exc:
                raise ValueError(f"image {info['id']}: {exc}") from None
        else:
            masks = []
            for path in info["mask_paths"]:
                mask = read_image(path)
                if mask.ndim == 3:
                    mask = mask[:, :, :3].max(axis=2)
                if mask.shape != (height, width):
                    raise ValueError(f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but its "
                                     f"image {info['path']} is {height}x{width}; fix or remove it")
                masks.append(mask > 0)
        mask = np.stack(masks, axis=-1) if masks else np.zeros((height, width, 0), bool)
        return mask, np.ones(mask.shape[-1], np.int32)

    def check_image(self, image_id, channels=None):
        """Problems of one image (see :meth:`Dataset.check_image`), cheaply: the image is fully
        decoded; each mask PNG only has its header (size) and its last 12 bytes (the IEND
        chunk: a truncated file lacks it) read, so damage inside a complete mask file is not
        seen. Run-length masks are decoded."""
        from ..data.checks import _problem, check_image_array, png_header

        info = self._info(image_id)
        if info["source"] != SOURCE or "rles" in info:
            return super().check_image(image_id, channels)
        want = self.channel_count if channels is None else channels
        try:
            image = self.load_image(image_id)
        except Exception as exc:  # noqa: BLE001 - reported
            return [_problem("image", exc)]
        problems = check_image_array(image, want, info["height"], info["width"])
        for path in info["mask_paths"]:
            try:
                height, width, complete = png_header(path)
                if (height, width) != (info["height"], info["width"]):
                    problems.append(f"mask size differs from image: {path} is {height}x{width}, "
                                    f"the image {info['height']}x{info['width']}")
                elif not complete:
                    problems.append(f"mask truncated: {path} (the PNG ends before its IEND "
                                    "chunk)")
            except Exception as exc:  # noqa: BLE001
                problems.append(_problem(f"mask {path}", exc))
        return problems

    def image_reference(self, image_id):
        """Path of the image file."""
        return self._info(image_id)["path"]

    def load_nucleus(self, dataset_dir, subset):
        """Matterport's nucleus-sample entry point.

        subset: ``"train"``/``"val"`` (the split of ``val_ids.txt`` in ``stage1_train``) or a
        folder name below ``dataset_dir`` such as ``"stage1_train"`` or ``"stage1_test"``
        (images without masks allowed). Note: Matterport's sample used its own 25 val ids.
        """
        if subset in ("train", "val"):
            return self.load(dataset_dir, subset=subset)
        folder = Path(dataset_dir) / subset
        if not folder.is_dir():
            raise FileNotFoundError(f"subset folder not found: {folder} (subset is 'train', "
                                    "'val' or a folder name such as 'stage1_test')")
        return self.load(folder, require_masks=False)
