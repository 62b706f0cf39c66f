"""Nuclei datasets with the Matterport ``Dataset`` API."""

from .dsb import DSBDataset
from .monuseg import MoNuSegDataset
from .pannuke import PanNukeDataset
from .synthetic import SyntheticNucleiDataset

__all__ = ["DSBDataset", "MoNuSegDataset", "PanNukeDataset", "SyntheticNucleiDataset"]
