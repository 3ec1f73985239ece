"""What the `kubetune` command shows: a job's status, a run's summary, a search's page."""
