"""Turning trained PyTorch ResNets into inference graphs and deployable artifacts."""
