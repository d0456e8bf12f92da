"""The policy actor: the one authority for who may call what, and how fast.

After commune's access module. State lives in the JetStream KV bucket ``actor_<name>``
(file store: it survives restarts of this actor and of the nats-server); every host
enforces it from its own cached copy (:mod:`actorbus.host.policy`). Every change must be
signed by an admin and is recorded (who, what, when) in the audit stream
(:mod:`actorbus.node.audit`). The key that first starts the policy actor
(``$ACTOR_KEY``, ``default``) is its first admin.
"""

from .actor import Policy

__all__ = ["Policy"]
