"""Built-in actors (policy, gateway, jobs) built on :mod:`actorbus.runtime`."""
