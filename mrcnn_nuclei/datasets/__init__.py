"""Nuclei datasets with the Matterport ``Dataset`` API."""

from .dsb import DSBDataset
from .label_images import LabelImageDataset
from .monuseg import MoNuSegDataset
from .pannuke import PanNukeDataset
from .synthetic import SyntheticNucleiDataset

__all__ = ["DSBDataset", "LabelImageDataset", "MoNuSegDataset", "PanNukeDataset",
           "SyntheticNucleiDataset"]
