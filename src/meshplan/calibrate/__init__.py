"""Calibration of the cost model against published, measured training runs."""
