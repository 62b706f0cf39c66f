"""Leave-one-organ-out folds (MoNuSeg's cross-organ protocol).

Organ of an image, in order: ``image_info["organ"]`` when the dataset provides it; an explicit
``(name, organ)`` pair; else the TCGA tissue-source-site code of a name ``TCGA-<site>-...`` looked
up in :data:`ORGAN_BY_SITE`.

The table covers the sites of the 30 MoNuSeg 2018 training tiles (and the test tiles of the same
sites) with the organ labels of the MoNuSeg release.  Known gap: the release labels sites 18, 21,
38, 49 and 50 "liver", although in TCGA's code table those are lung cancer collections (LUSC,
LUAD); the release label is kept so folds match published MoNuSeg splits.  Sites not in the table
(other TCGA tiles, or the test release's extra organs) must be given as ``(name, organ)`` pairs.
"""

from __future__ import annotations

__all__ = ["ORGAN_BY_SITE", "organ_of", "leave_one_organ_out"]

#: TCGA tissue-source-site code -> organ, as labelled by the MoNuSeg release.
ORGAN_BY_SITE = {
    "A7": "breast", "AR": "breast", "E2": "breast",
    "B0": "kidney", "HE": "kidney",
    "18": "liver", "21": "liver", "38": "liver", "49": "liver", "50": "liver",
    "CH": "prostate", "G9": "prostate",
    "DK": "bladder", "G2": "bladder",
    "AY": "colon", "NH": "colon",
    "KB": "stomach", "RD": "stomach",
}


def organ_of(name):
    """Organ of a TCGA tile name (``"TCGA-21-5784-01Z-00-DX1"`` -> ``"liver"``), or None."""
    parts = str(name).split("-")
    if len(parts) > 1 and parts[0].upper() == "TCGA":
        return ORGAN_BY_SITE.get(parts[1].upper())
    return None


def _entries(source):
    """source -> list of (id, organ or None, display name)."""
    if hasattr(source, "image_info") and hasattr(source, "image_ids"):
        out = []
        for image_id in source.image_ids:
            info = source.image_info[image_id]
            name = info.get("id", image_id)
            organ = info.get("organ") or organ_of(name)
            out.append((image_id, organ, name))
        return out
    out = []
    for item in source:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(f"leave_one_organ_out: entry {item!r} must be (name, organ)")
            out.append((item[0], item[1] or organ_of(item[0]), item[0]))
        else:
            out.append((item, organ_of(item), item))
    return out


def leave_one_organ_out(source):
    """Folds holding out one organ each -> list of (held_out_organ, train_ids, test_ids).

    source: a Dataset (ids are its ``image_ids``), a list of TCGA names, or a list of
    ``(name, organ)`` pairs (ids are the names).  Organs in alphabetical order; id lists keep the
    source's order.  Every image is in the test list of exactly one fold.
    """
    entries = _entries(source)
    if not entries:
        raise ValueError("leave_one_organ_out: no images (did you call dataset.prepare()?)")
    missing = [name for _, organ, name in entries if not organ]
    if missing:
        raise ValueError(f"leave_one_organ_out: no organ known for {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; set image_info['organ'] in the "
                         "dataset or pass (name, organ) pairs")
    organs = sorted({organ for _, organ, _ in entries})
    if len(organs) < 2:
        raise ValueError(f"leave_one_organ_out: needs at least two organs, found {organs}")
    folds = []
    for held in organs:
        test = [i for i, organ, _ in entries if organ == held]
        train = [i for i, organ, _ in entries if organ != held]
        folds.append((held, train, test))
    return folds
