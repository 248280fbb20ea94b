"""The server's way out, owned in one place: once a stop is asked for (a signal, `request_exit`,
an app's lifespan ending), the server is not ready any more (HTTP /readyz and /v2/health/ready,
gRPC ServerReady and its health service), every HTTP answer says `Connection: close`, loads in
progress stop between two warm-up runs, new model control is refused, and every way out ends
within DRAIN_DELAY_S + GRACE_S of that moment (`time_left`). Serving goes on while the front ends
drain what they accepted.

`stop` may be called from any thread (a signal while start-up models load): it sets flags and a
threading.Event, nothing that belongs to the event loop.
"""

from __future__ import annotations

import math
import threading
import time


class Lifecycle:
    def __init__(self, budget_s: float = math.inf) -> None:
        self.budget_s = budget_s  # DRAIN_DELAY_S + GRACE_S
        self.draining = False  # not ready, while what is in flight finishes
        self.stop_loads = threading.Event()  # checked between warm-up runs
        self.stop_requested: float | None = None  # monotonic time of the first stop request

    @property
    def closing(self) -> bool:
        """Model control is refused and loads are cancelled."""
        return self.stop_loads.is_set()

    def stop(self) -> None:
        """The first stop request starts the clock; every one is not ready from now on."""
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()
        self.draining = True
        self.stop_loads.set()

    def time_left(self) -> float:
        """Seconds left of the budget since the first stop request (all of it before one)."""
        if self.stop_requested is None:
            return self.budget_s
        return max(0.0, self.stop_requested + self.budget_s - time.monotonic())
