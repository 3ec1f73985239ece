"""The FineTuneJob API, versioned: the models here are the single source of the CRD."""
