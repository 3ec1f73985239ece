"""A Kubernetes API for tests: kmock's emulator on a loopback port, plus kopf runners.

`emulator` serves the API (and says what it does not prove), `client` talks to it as a
user would, `operators` runs a kopf operator against it in a thread or a subprocess, and
`fixtures` wraps them for pytest. Benchmarks import the same classes without pytest.
"""
