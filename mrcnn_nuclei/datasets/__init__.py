"""Nuclei datasets with the Matterport ``Dataset`` API."""

from .dsb import DSBDataset
from .monuseg import MoNuSegDataset
from .synthetic import SyntheticNucleiDataset

__all__ = ["DSBDataset", "MoNuSegDataset", "SyntheticNucleiDataset"]
