"""Where the work runs: device and precision choice, DDP under torchrun (both tasks)."""
