"""Demonstrations for behaviour cloning: the dataset format (demos.py) and the expert recorder (record.py)."""

from .demos import ActionStats, DemoDatasetError, action_array, load_demos, quantile_bounds, save_demos

__all__ = ["ActionStats", "DemoDatasetError", "action_array", "load_demos", "quantile_bounds", "save_demos"]
