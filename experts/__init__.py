"""Experts: branch the base, train each on its cluster only, register; add languages (HMR)."""

from experts.registry import Registry
from experts.training import add_language, train_all, train_baseline, train_expert

__all__ = ["Registry", "add_language", "train_all", "train_baseline", "train_expert"]
