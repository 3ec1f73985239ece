"""Which API failures the operator retries soon: the server's passing trouble only.

kopf waits a minute before running a handler that raised an unexpected error again; a 429
or a 5xx is the API server's passing trouble, so the handler runs again after the
server's Retry-After or a second, while a refusal (4xx) keeps kopf's default.
"""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException

from kubetune_operator import kube


def failure(status: int, retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="x")
    error.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error


def test_a_429_waits_its_retry_after_and_a_5xx_a_second() -> None:
    assert kube.retry_delay(failure(429, "3")) == 3.0
    assert kube.retry_delay(failure(429)) == kube.TRANSIENT_RETRY_S
    assert kube.retry_delay(failure(429, "soon")) == kube.TRANSIENT_RETRY_S
    assert kube.retry_delay(failure(500)) == kube.TRANSIENT_RETRY_S
    assert kube.retry_delay(failure(503)) == kube.TRANSIENT_RETRY_S


def test_refusals_and_other_errors_are_not_transient() -> None:
    assert kube.retry_delay(failure(409)) is None
    assert kube.retry_delay(failure(422)) is None
    assert kube.retry_delay(ValueError("bad")) is None
