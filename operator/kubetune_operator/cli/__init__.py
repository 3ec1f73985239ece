"""The `kubetune` command: validate, explain, crd, run (local), submit, status, report."""
