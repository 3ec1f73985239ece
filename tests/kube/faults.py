"""Faults the test emulator injects on demand, the way a busy or restarting API server fails.

An operator that passes its tests only against a server that always answers at once, keeps
every watch open and never forgets a resourceVersion has not been shown to survive a real
control plane. `Faults` says what share of requests go wrong and how; `FaultPlan` decides,
per request, what goes wrong. Its decisions depend only on the seed and on the request
itself (method, path, query without resourceVersion, and how many such requests came
before), not on the order in which concurrent requests reach the server, so one seed gives
the same faults to the same requests run after run.

What is injected (each counted in `FaultPlan.injected`):

- an error answer (500 InternalError, or 429 TooManyRequests with `Retry-After` and
  `details.retryAfterSeconds`), for a share of requests; a write answered so is NOT applied
  (the failure is before storage, as when an apiserver cannot reach etcd or sheds load);
- a delay before the answer, drawn uniformly from a range;
- a watch stream that ends mid-way (after a time drawn from a range), so the client must
  resume from the last resourceVersion it saw;
- a resumed watch answered with an ERROR event of code 410 Gone (the version has been
  compacted), so the client must list again.

Requests whose User-Agent starts with `spare_agent` (the tests' own client by default)
are never faulted: the test plays the cluster's controllers and must not lose its writes.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import Final

TEST_USER_AGENT: Final = "kubetune-tests"
INTERNAL_ERROR: Final = 500
TOO_MANY_REQUESTS: Final = 429
GONE: Final = 410


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and how often."""

    share: float = 0.0
    """The share of requests (watch openings included) answered with one of `codes`."""
    codes: tuple[int, ...] = (INTERNAL_ERROR, TOO_MANY_REQUESTS)
    retry_after: int = 1
    """Seconds in the Retry-After of a 429."""
    delay: tuple[float, float] = (0.0, 0.0)
    """Each answer waits a time drawn uniformly from this range, in seconds."""
    cut_share: float = 0.0
    """The share of watch streams that end before their timeoutSeconds."""
    cut_after: tuple[float, float] = (0.5, 3.0)
    """When a cut stream ends, in seconds after it opened."""
    gone_share: float = 0.0
    """The share of resumed watches (with a resourceVersion) answered 410 Gone."""
    seed: int = 0
    spare_agent: str | None = TEST_USER_AGENT


@dataclass
class FaultPlan:
    """Per-request decisions for one `Faults`, and the count of what it injected."""

    faults: Faults = field(default_factory=Faults)
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    _seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def spares(self, user_agent: str) -> bool:
        """Whether this client is never faulted."""
        spare = self.faults.spare_agent
        return spare is not None and user_agent.startswith(spare)

    def draw(self, signature: str) -> random.Random:
        """The random source for the n-th request of this signature (deterministic)."""
        self._seen[signature] += 1
        return random.Random(f"{self.faults.seed}|{signature}|{self._seen[signature]}")

    def error(self, chance: random.Random) -> int | None:
        """The error code to answer with, or None."""
        if not self.faults.codes or chance.random() >= self.faults.share:
            return None
        code = chance.choice(self.faults.codes)
        self.injected[str(code)] += 1
        return code

    def delay(self, chance: random.Random) -> float:
        """Seconds to wait before answering."""
        low, high = self.faults.delay
        seconds = chance.uniform(low, high) if high > 0 else 0.0
        if seconds > 0:
            self.injected["delay"] += 1
        return seconds

    def cut(self, chance: random.Random) -> float | None:
        """Seconds after which a watch stream ends, or None to keep it open."""
        if chance.random() >= self.faults.cut_share:
            return None
        self.injected["watch cut"] += 1
        return chance.uniform(*self.faults.cut_after)

    def gone(self, chance: random.Random) -> bool:
        """Whether a resumed watch is answered 410 Gone."""
        if chance.random() >= self.faults.gone_share:
            return False
        self.injected["410 Gone"] += 1
        return True
