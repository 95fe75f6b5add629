"""Uncertainty and active learning: calibration of ensemble spreads (``calibration``)."""
