"""Data: ``prepare`` (image folders / Kaggle -> shards), ``shards`` (the root's index), ``streams`` (the rank's
training stream and the sequential evaluation stream), ``transforms`` (crops, uint8 <-> [-1, 1]), ``demo`` (the
embedded demo data set), ``kaggle`` (the competition's layouts)."""
