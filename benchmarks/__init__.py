"""The benchmark suite: our networks and predictor against MONAI's, in one run, as ratios (not library code)."""
