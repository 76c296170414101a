"""Models that leave the tool: TorchScript / ONNX (models.py) and the MONAI bundle (bundle.py)."""
