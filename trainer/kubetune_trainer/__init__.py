"""The kubetune trainer: what every FineTuneJob pod runs, and what `kubetune run` runs locally.

Importing it sets how long torch's OpenMP threads spin before they sleep
(`threads.quiet_openmp_waits`): OpenMP reads that once, when torch loads, and every entry
point of the trainer imports this package before torch.
"""

from kubetune_trainer.threads import quiet_openmp_waits

quiet_openmp_waits()
