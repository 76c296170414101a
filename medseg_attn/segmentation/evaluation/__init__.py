"""Scoring predictions: Dice / HD95 / surface Dice per case, per-structure statistics, the stress test."""
