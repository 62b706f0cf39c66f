"""Where the config of a weights file is: the one lookup used by every loader.

Two names exist and both are read, in this order: ``<stem>.json`` beside the file (written by
:func:`~mrcnn_nuclei.weights.save_weights` with ``config=``), then ``config.json`` in the file's
folder (written once per run folder by ``MaskRCNN.train`` and by
:func:`mrcnn_nuclei.modelfolder.save_model`).
"""

from __future__ import annotations

import os

__all__ = ["CONFIG_NAME", "config_path_beside", "find_config_beside", "load_config_beside"]

#: The config file of a folder (run folders, model folders).
CONFIG_NAME = "config.json"


def config_path_beside(path):
    """``dir/name.weights.h5`` (or ``dir/name.h5``) -> ``dir/name.json``."""
    path = os.fspath(path)
    for suffix in (".weights.h5", ".h5"):
        if path.endswith(suffix):
            return path[: -len(suffix)] + ".json"
    return path + ".json"


def find_config_beside(path):
    """Path of the config JSON of weights ``path``: ``<stem>.json`` beside it if present, else
    ``config.json`` in its folder if present, else None."""
    path = os.fspath(path)
    for candidate in (config_path_beside(path),
                      os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_NAME)):
        if os.path.exists(candidate):
            return candidate
    return None


def load_config_beside(path, config_class=None):
    """The Config saved with weights ``path`` (:func:`find_config_beside`), or None if there is
    none.

    config_class: class used to rebuild it (default :class:`mrcnn_nuclei.config.Config`).
    """
    json_path = find_config_beside(path)
    if json_path is None:
        return None
    if config_class is None:
        from ..config import Config as config_class
    return config_class.load_json(json_path)
