"""``python -m actorbus.cli``: what ``actor`` runs (and the supervisor spawns)."""

from . import main

main()
