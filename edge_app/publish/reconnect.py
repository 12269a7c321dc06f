"""When to try the broker again: soon after it is back, whatever the earlier outages were, without connect storms.

A broker that cannot be reached (connection refused, timed out, no route, closed before it answered) costs nothing
to probe: the attempt fails in the TCP handshake, before any TLS or MQTT work. So it is probed every ``probe_s``
(each wait drawn from its upper half: devices that lost the broker at the same moment do not all come back at the
same one), however long the outage, and the delay between its return and the reconnection stays under ``probe_s``
plus one connection. The doubling back-off is kept for a broker that answers but will not have us: it refused the
connection (credentials), failed the TLS handshake, or keeps dropping us (two devices sharing a client id, an
overloaded broker). A lost connection is retried at once: when that attempt finds no broker, the loss was an outage
(probe again); when it connects and the new connection is lost within ``STABLE_S`` too, that is a flap, and the
back-off grows. A connection that lasted ``STABLE_S`` resets the back-off to its minimum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STABLE_S = 10.0  # a connection that lasted this long was no flap


@dataclass
class ReconnectPolicy:
    """The wait before the next connection attempt, from what the last one (or the lost connection) showed."""

    probe_s: float = 1.0
    min_s: float = 1.0
    max_s: float = 60.0
    failures: int = 0  # refusals and flaps in a row, since the last connection that lasted STABLE_S
    flapping: bool = False  # the last connection was short and the broker has not been away since

    def unreachable(self) -> float:
        """Nothing answered: probe again soon. The back-off is left as it is: an outage is no refusal."""
        self.flapping = False
        return self.probe_s * random.uniform(0.5, 1.0)

    def refused(self) -> float:
        """The broker answered but refused us: back off, doubling up to ``max_s``."""
        self.failures += 1
        return min(self.min_s * 2 ** (self.failures - 1), self.max_s)

    def lost(self, connected_for: float) -> float:
        """An established connection ended: retry at once, unless it is the second short one in a row."""
        if connected_for >= STABLE_S:
            self.failures, self.flapping = 0, False
            return 0.0
        if self.flapping:
            return self.refused()
        self.flapping = True
        return 0.0
