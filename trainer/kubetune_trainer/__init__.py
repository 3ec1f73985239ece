"""The kubetune trainer: what every FineTuneJob pod runs, and what `kubetune run` runs locally."""
