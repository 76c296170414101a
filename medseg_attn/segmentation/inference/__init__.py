"""From a trained model to label maps on each input's grid: the predictor, sliding window, resampling back,
explanation maps, the batch run and its output files."""
