"""The training engine both tasks share: the loop (``TrainTask`` + ``fit``), checkpoints, DDP and devices."""
