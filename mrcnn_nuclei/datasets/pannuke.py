"""PanNuke (Gamper et al.) 256x256 H&E patches with typed nucleus instances, from its .npy folds.

Layout read by :meth:`PanNukeDataset.load`: ``root`` holds one folder per fold, either as
released (``Fold 1/images/fold1/images.npy``, ``Fold 1/images/fold1/types.npy``,
``Fold 1/masks/fold1/masks.npy``) or flat (``fold1/images.npy, masks.npy, types.npy``); the
three files are searched anywhere below each fold folder. ``root`` may also be one fold folder.

* ``images.npy``: ``[N, 256, 256, 3]`` float (0..255) or uint8.
* ``masks.npy``: ``[N, 256, 256, 6]``; channels 0..4 are instance-id maps of the five nucleus
  types (:data:`CLASS_NAMES`), channel 5 is background and is ignored.
* ``types.npy``: ``[N]`` tissue names (optional; ``image_info["tissue"]`` is ``None`` without).

The arrays are opened with ``np.load(mmap_mode="r")``: only the patches asked for are read.
Instances are the distinct non-zero ids of each type channel, ordered by type, then id.
``classes="binary"`` maps every instance to class 1 ``"nucleus"``; ``"multi"`` keeps the five
types as classes 1..5.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..data.convert import to_uint8
from ..data.dataset import Dataset

__all__ = ["PanNukeDataset", "CLASS_NAMES"]

logger = logging.getLogger(__name__)

SOURCE = "pannuke"
#: The five nucleus types, in the order of the mask channels 0..4.
CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def _fold_number(name):
    match = re.search(r"\d+", name)
    return int(match.group()) if match else None


def _find_one(folder, filename, required=True):
    hits = sorted(folder.rglob(filename))
    if len(hits) > 1:
        raise ValueError(f"{len(hits)} files named {filename} below {folder} ({hits[0]}, "
                         f"{hits[1]}, ...): keep one per fold folder")
    if not hits:
        if required:
            raise FileNotFoundError(f"no {filename} below fold folder {folder}")
        return None
    return hits[0]


class PanNukeDataset(Dataset):
    """PanNuke folds: ``ds.load(root, folds=None, classes="binary")`` then ``ds.prepare()``."""

    def __init__(self, class_map=None):
        super().__init__(class_map)
        self._arrays = {}  # path -> memory-mapped array (per process; not pickled)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def load(self, root, folds=None, classes="binary", channels=3):
        """Register PanNuke patches.

        root: folder holding the fold folders (or one fold folder). folds: fold numbers or
        folder names to load (default all, in name order). classes: "binary" or "multi".
        channels: of ``load_image``. Returns ``self``.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"PanNuke root folder not found: {root}")
        if classes not in ("binary", "multi"):
            raise ValueError(f"classes must be 'binary' or 'multi', got {classes!r}")
        def is_fold(folder):
            return any(folder.rglob("images.npy")) and any(folder.rglob("masks.npy"))

        fold_dirs = sorted(p for p in root.iterdir() if p.is_dir() and is_fold(p))
        if not fold_dirs and is_fold(root):
            fold_dirs = [root]  # root is a single fold folder
        if not fold_dirs:
            raise FileNotFoundError(f"no images.npy + masks.npy below {root}: expected fold "
                                    "folders such as 'Fold 1/images/fold1/images.npy'")
        if folds is not None:
            folds = [folds] if isinstance(folds, (int, str)) else list(folds)
            wanted = []
            for fold in folds:
                number = int(fold) if str(fold).isdigit() else None
                match = [d for d in fold_dirs if d.name == str(fold)
                         or (number is not None and _fold_number(d.name) == number)]
                if not match:
                    raise FileNotFoundError(f"fold {fold!r} not found in {root} (folds there: "
                                            f"{[d.name for d in fold_dirs]})")
                wanted += [d for d in match if d not in wanted]
            fold_dirs = wanted

        previous = {info.get("classes") for info in self.image_info if info["source"] == SOURCE}
        if previous - {classes}:
            raise ValueError(f"this dataset already holds PanNuke images with classes="
                             f"{previous.pop()!r}; use one PanNukeDataset per classes setting")
        self.channel_count = int(channels)
        if classes == "binary":
            self.add_class(SOURCE, 1, "nucleus")
        else:
            for k, name in enumerate(CLASS_NAMES):
                self.add_class(SOURCE, k + 1, name)
        for fold_dir in fold_dirs:
            images_path = _find_one(fold_dir, "images.npy")
            masks_path = _find_one(fold_dir, "masks.npy")
            types_path = _find_one(fold_dir, "types.npy", required=False)
            images = self._array(images_path)
            masks = self._array(masks_path)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"{images_path} has shape {images.shape}; expected [N, H, W, 3]")
            if masks.ndim != 4 or masks.shape[:3] != images.shape[:3] or masks.shape[-1] < 5:
                raise ValueError(f"{masks_path} has shape {masks.shape}; expected "
                                 f"[{images.shape[0]}, {images.shape[1]}, {images.shape[2]}, 6] "
                                 f"to match {images_path}")
            if types_path is not None:
                types = np.load(types_path, allow_pickle=False)
                if types.shape != (images.shape[0],):
                    raise ValueError(f"{types_path} has shape {types.shape}; expected "
                                     f"[{images.shape[0]}] (one tissue name per image)")
                tissues = [str(t) for t in types]
            else:
                logger.warning("PanNukeDataset: no types.npy below %s; tissue is None", fold_dir)
                tissues = [None] * images.shape[0]
            for index in range(images.shape[0]):
                self.add_image(SOURCE, image_id=f"{fold_dir.name}/{index}", path=str(images_path),
                               masks_path=str(masks_path), fold=fold_dir.name, index=index,
                               tissue=tissues[index], classes=classes,
                               height=int(images.shape[1]), width=int(images.shape[2]))
        return self

    def _array(self, path):
        key = str(path)
        array = self._arrays.get(key)
        if array is None:
            try:
                array = np.load(key, mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"cannot read {key}: {exc}") from exc
            self._arrays[key] = array
        return array

    def load_image(self, image_id):
        """Patch ``[256, 256, channel_count]`` uint8 (float 0..255 values are rounded, clipped)."""
        info = self._info(image_id)
        image = np.asarray(self._array(info["path"])[info["index"]])
        if np.issubdtype(image.dtype, np.floating):  # PanNuke stores 0..255 floats
            image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return to_uint8(image, channels=self.channel_count, path=info["path"])

    def load_type_maps(self, image_id):
        """Instance-id maps ``[H, W, 5]`` int64 of the five types (channel 5 dropped)."""
        info = self._info(image_id)
        return np.asarray(self._array(info["masks_path"])[info["index"], :, :, :5]).astype(np.int64)

    def load_mask(self, image_id):
        """Masks ``[H, W, N]`` bool and class ids ``[N]`` int32 (1, or 1..5 for "multi")."""
        info = self._info(image_id)
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        maps = self.load_type_maps(image_id)
        stacks, class_ids = [], []
        for channel in range(maps.shape[2]):  # the five type channels
            ids = np.unique(maps[:, :, channel])
            ids = ids[ids != 0]
            stacks.append(maps[:, :, channel, None] == ids)
            class_ids.append(np.full(len(ids), channel + 1 if info["classes"] == "multi" else 1,
                                     np.int32))
        return np.concatenate(stacks, axis=2), np.concatenate(class_ids)

    def check_image(self, image_id, channels=None):
        """Read the patch and its type maps from the .npy files; compare sizes."""
        from ..data.checks import check_image_and_labels

        if self._info(image_id)["source"] != SOURCE:
            return super().check_image(image_id, channels)
        return check_image_and_labels(self, image_id, channels, self.load_type_maps)

    def image_reference(self, image_id):
        """``"<images.npy path>[index]"``."""
        info = self._info(image_id)
        return f"{info['path']}[{info['index']}]"
