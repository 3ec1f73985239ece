"""The operator pod's program: kopf handlers, worker groups, search trials, shared state.

It runs only in the cluster (`python -m kubetune_operator.controller`); the `kubetune`
command never imports it.
"""
