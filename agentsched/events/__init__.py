"""The event bus between apps: one Redis stream, a consumer group per app.

`bus.EventBus` publishes, tails and subscribes (`async for` or `bus.on` callbacks);
`group_reader.GroupReader` is one consumer of a group (read, reclaim, dead-letter,
acknowledge); `message` holds `EventMessage` and the wire format (no I/O); `sse` turns a
tail into server-sent events for the API.

External systems: only `bus` and `group_reader` issue stream commands; the worker's
status scripts append lifecycle events in the wire format of `message`.
"""

from __future__ import annotations

from agentsched.events.bus import EventBus, Subscription
from agentsched.events.message import EventMessage

__all__ = ["EventBus", "EventMessage", "Subscription"]
