"""cyclegan-dist: CycleGAN photo -> painting training under Accelerate, from WebDataset shards."""

__version__ = "0.1.0"
