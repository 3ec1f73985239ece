"""`python -m kubetune_operator`: the `kubetune` command without its console script."""

from kubetune_operator.console import main

main()
