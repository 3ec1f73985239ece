"""The kubetune operator: FineTuneJob resources in, distributed training pods out."""
