"""The training loop: the recipe (setup, train, evaluate, save, cleanup) and the parts it holds."""
