"""The ``Dataset`` base class with Matterport's public API.

Usage is the same as ``mrcnn.utils.Dataset``: register classes with :meth:`Dataset.add_class`,
images with :meth:`Dataset.add_image`, call :meth:`Dataset.prepare`, then read
:meth:`Dataset.load_image` (``[H, W, C]`` uint8) and :meth:`Dataset.load_mask`
(``[H, W, N]`` bool, ``[N]`` int32 class ids). Subclasses implement ``load(...)`` (the
registration step) and usually ``load_mask``; user subclasses written for Matterport, which
override ``load_image``/``load_mask`` directly, keep working.

Indices: ``image_id`` arguments are the internal consecutive indices (``dataset.image_ids``); the
dataset's own id of an image is ``image_info[image_id]["id"]``. Class id 0 is always the
background ``"BG"``.
"""

from __future__ import annotations

import logging

import numpy as np

from .convert import read_image, to_uint8

__all__ = ["Dataset"]

logger = logging.getLogger(__name__)


class Dataset:
    """Base class for instance-segmentation datasets (Matterport's ``utils.Dataset`` API).

    Attributes: ``image_info`` (list of dicts with ``id``, ``source``, ``path`` and any extra
    keys), ``class_info`` (list of dicts with ``source``, ``id``, ``name``; entry 0 is ``BG``),
    ``source_class_ids`` (filled by :meth:`prepare`), ``channel_count`` (channels of
    :meth:`load_image`, default 3).
    """

    #: channels returned by :meth:`load_image`; set per instance by ``load(..., channels=)``.
    channel_count = 3

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}
        self.class_map = class_map  # accepted for Matterport compatibility; not used

    # ------------------------------------------------------------------ registration
    def load(self, *args, **kwargs):
        """Register the classes and images of a dataset (implemented by subclasses)."""
        raise NotImplementedError(
            f"{type(self).__name__}.load() is not implemented: subclass Dataset and implement "
            "load(...) with add_class()/add_image(), or call add_class()/add_image() directly")

    def add_class(self, source, class_id, class_name):
        """Register class ``class_id`` named ``class_name`` of ``source`` (ignored if present)."""
        if not isinstance(source, str) or "." in source:
            raise ValueError(f"class source {source!r} must be a string without '.', "
                             "e.g. 'nucleus' or 'dsb'")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image: ``id`` = ``image_id`` (the source's own id), ``path`` and extras."""
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id):
        """A human-readable reference (the path or a URL) of an image; ``""`` if unknown."""
        path = self._info(image_id).get("path")
        return "" if path is None else str(path)

    def prepare(self, class_map=None):
        """Build the lookup tables after registration. ``class_map`` is accepted and unused.

        Sets ``num_classes``, ``class_ids``, ``class_names``, ``num_images``, ``_image_ids``,
        ``class_from_source_map``, ``image_from_source_map``, ``sources``, ``source_class_ids``.
        """
        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        # Only the first comma-separated part of a name is kept (Matterport does the same).
        self.class_names = [str(info["name"]).split(",")[0] for info in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {f"{info['source']}.{info['id']}": int(i)
                                      for i, info in enumerate(self.class_info)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": int(i)
                                      for i, info in enumerate(self.image_info)}
        self.sources = sorted({info["source"] for info in self.class_info})
        self.source_class_ids = {
            source: [i for i, info in enumerate(self.class_info)
                     if i == 0 or info["source"] == source]
            for source in self.sources}

    def map_source_class_id(self, source_class_id):
        """``"source.class_id"`` string -> internal class id."""
        try:
            return self.class_from_source_map[source_class_id]
        except AttributeError:
            raise RuntimeError("call dataset.prepare() before map_source_class_id()") from None
        except KeyError:
            raise KeyError(f"unknown source class {source_class_id!r}; known: "
                           f"{sorted(self.class_from_source_map)}") from None

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the id the class has in ``source``."""
        info = self.class_info[class_id]
        if info["source"] != source:
            raise ValueError(f"class {class_id} ({info['name']!r}) belongs to source "
                             f"{info['source']!r}, not {source!r}")
        return info["id"]

    @property
    def image_ids(self):
        """``[num_images]`` internal image indices (after :meth:`prepare`)."""
        return self._image_ids

    def source_image_link(self, image_id):
        """Path (or URL) of the image file, as registered."""
        return self._info(image_id)["path"]

    # ------------------------------------------------------------------ loading
    def load_image(self, image_id):
        """Read an image -> ``[H, W, channel_count]`` uint8 (via :func:`to_uint8`)."""
        path = self._info(image_id).get("path")
        if path is None:
            raise ValueError(f"image {image_id} of {type(self).__name__} has no path; "
                             "override load_image() for generated images")
        return to_uint8(read_image(path), channels=self.channel_count, path=path)

    def load_mask(self, image_id):
        """Instance masks of an image -> (``[H, W, N]`` bool, ``[N]`` int32 class ids).

        The base class has no annotations: it logs a warning and returns ``N = 0``.
        """
        logger.warning("%s uses the default load_mask(), which returns no instances; "
                       "override load_mask() in your dataset class", type(self).__name__)
        info = self._info(image_id)
        if "height" in info and "width" in info:
            height, width = int(info["height"]), int(info["width"])
        else:
            height, width = self.load_image(image_id).shape[:2]
        return np.zeros((height, width, 0), bool), np.zeros((0,), np.int32)

    def check_image(self, image_id, channels=None):
        """Problems of one image, as a list of strings (empty when it is fine); called for every
        image by :func:`mrcnn_nuclei.data.checks.check_dataset` before training/evaluation.

        The default loads the image and its masks (a full decode: catches unreadable and
        truncated files) and checks that the image has ``channels`` channels (default
        ``channel_count``) and that the masks are ``[H, W, N]`` with N class ids. Override it
        for a cheaper check, or to return ``[]`` for images that cannot be corrupt.
        """
        from .checks import default_check_image

        return default_check_image(self, image_id, channels)

    # ------------------------------------------------------------------ helpers
    def _info(self, image_id):
        try:
            return self.image_info[int(image_id)]
        except (IndexError, TypeError, ValueError):
            raise IndexError(f"image_id {image_id!r} is out of range: {type(self).__name__} has "
                             f"{len(self.image_info)} images (ids 0..{len(self.image_info) - 1})") \
                from None

    def __len__(self):
        return len(self.image_info)

    def __repr__(self):
        return (f"<{type(self).__name__}: {len(self.image_info)} images, "
                f"{len(self.class_info)} classes>")
