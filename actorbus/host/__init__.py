"""What one actor replica runs: :class:`Actor`, :func:`endpoint` and :class:`Call`, the
request pipeline (verify -> policy -> admit -> invoke -> reply), admission, the replay
guard, sync handler threads, the replica's view of the policy and its quota leases,
sessions, ``$SRV``, writing streams, and :func:`serve`. It decides whether a request is
answered, by which function, and how; it calls other actors only through the client."""

from .actor import Actor, Call, current_call, endpoint
from .replica import Host, serve

__all__ = ["Actor", "Call", "Host", "current_call", "endpoint", "serve"]
