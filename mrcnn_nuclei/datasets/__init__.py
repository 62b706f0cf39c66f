"""Nuclei datasets with the Matterport ``Dataset`` API."""

from .dsb import DSBDataset
from .synthetic import SyntheticNucleiDataset

__all__ = ["DSBDataset", "SyntheticNucleiDataset"]
