"""Calibrating an adapter's dial (`flexip calibrate`): identity and prompt following measured along the raw gate
on reference/prompt pairs, and the map under which equal steps of the dial are equal steps along that
trade-off, written with the adapter (docs/decisions/calibration.md)."""
