"""`python -m kubetune_operator`: the `kubetune` command without its console script."""

from kubetune_operator.cli.console import main

main()
