"""Training and evaluation: the dataset loader and augmentations, the song generator, curation,
the training loop, SDR evaluation, recipes and their command line. Imported only by the
commands that train or evaluate: separating and playing never load it."""
