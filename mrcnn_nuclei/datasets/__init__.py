"""Nuclei datasets with the Matterport ``Dataset`` API."""

from .synthetic import SyntheticNucleiDataset

__all__ = ["SyntheticNucleiDataset"]
