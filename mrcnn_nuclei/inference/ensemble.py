"""Ensemble of detectors with the ``detect()`` interface of one model.

``Ensemble([model_a, model_b, ...])`` runs every member on each image (``detect_soft`` when the
member has it, else ``detect``), optionally with test-time augmentation per member, and merges the
members' detections with :func:`mrcnn_nuclei.inference.merge.merge_instances`.  An instance is
kept when at least ``min_runs`` members found it; the default is a majority
(``len(models) // 2 + 1``).
"""

from __future__ import annotations

from .merge import merge_instances
from .tta import TRANSFORMS, tta_detect

__all__ = ["Ensemble"]


class Ensemble:
    """Several models behind one ``detect(images)``.

    models: objects with ``detect_soft(images)`` or ``detect(images)`` (e.g. ``MaskRCNN`` in
    inference mode).  tta: run :func:`tta_detect` per member with ``transforms`` and
    ``tta_min_runs`` before merging across members.
    """

    def __init__(self, models, min_runs=None, iou_threshold=0.5, mask_threshold=0.5,
                 missing="exclude", tta=False, transforms=TRANSFORMS, tta_min_runs=2):
        self.models = list(models)
        if not self.models:
            raise ValueError("Ensemble: models is empty; pass a list of detectors")
        for i, m in enumerate(self.models):
            if not (hasattr(m, "detect_soft") or hasattr(m, "detect")):
                raise TypeError(f"Ensemble: models[{i}] ({type(m).__name__}) has neither "
                                "detect_soft() nor detect()")
        n = len(self.models)
        self.min_runs = n // 2 + 1 if min_runs is None else int(min_runs)
        if not 1 <= self.min_runs <= n:
            raise ValueError(f"Ensemble: min_runs={min_runs} must be between 1 and the number "
                             f"of models ({n})")
        self.merge_kwargs = {"iou_threshold": iou_threshold, "mask_threshold": mask_threshold,
                             "missing": missing}
        self.tta = bool(tta)
        self.transforms = tuple(transforms)
        self.tta_min_runs = min(int(tta_min_runs), len(self.transforms))

    @property
    def config(self):
        """The first member's config (for code that reads model.config)."""
        return getattr(self.models[0], "config", None)

    def _member_runs(self, model, images):
        if self.tta:
            kwargs = dict(self.merge_kwargs, min_runs=self.tta_min_runs)
            return [tta_detect(model, img, self.transforms, merge_kwargs=kwargs) for img in images]
        if hasattr(model, "detect_soft"):
            return model.detect_soft(images)
        return model.detect(images)

    def detect_soft(self, images, verbose=0):
        """images: list of [H, W(, C)] -> one dict per image: rois [N, 4] int32, class_ids [N],
        scores [N] (mean over members), masks [H, W, N] bool, soft_masks [H, W, N] float32
        (members' average), n_runs [N] (members that found it)."""
        images = list(images)
        per_model = [self._member_runs(m, images) for m in self.models]
        kwargs = dict(self.merge_kwargs, min_runs=self.min_runs)
        return [merge_instances([runs[i] for runs in per_model], **kwargs)
                for i in range(len(images))]

    def detect(self, images, verbose=0):
        """Same as :meth:`detect_soft` (the dicts also carry soft_masks and n_runs)."""
        return self.detect_soft(images, verbose=verbose)
