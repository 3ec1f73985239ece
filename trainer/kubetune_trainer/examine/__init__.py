"""The examination of the final model: the bias audit, the attributions, the per-class results."""
