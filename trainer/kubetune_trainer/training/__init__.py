"""The training loop: the recipe (setup, train, evaluate, save, cleanup) and the small parts it holds."""
