"""`python -m kubetune_operator.controller`: the operator, without its console script."""

from kubetune_operator.controller.main import main

main()
