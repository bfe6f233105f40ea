"""cyclegan-dist: CycleGAN photo -> painting training under Accelerate, from WebDataset shards."""

__version__ = "0.2.0"
