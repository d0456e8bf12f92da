"""The HTTP gateway: web callers in, signed NATS calls out (see :mod:`.identity` for who a
call is made as, :mod:`.app` for the HTTP mapping, :mod:`.catalog` for OpenAPI)."""

from .actor import Gateway

__all__ = ["Gateway"]
