"""What a node's supervisor runs (``actor up``): one slot per replica keeping its process
alive (restarts with backoff, rolling restarts, draining stops), the supervisor that owns
a home's ``node.lock``, the ``actors.toml`` manifest, log shipping and audit writing. It
decides which processes run on this machine; a laptop that only calls actors never
imports it."""

from .manifest import Manifest, load_manifest
from .supervisor import Node, NodeInfo

__all__ = ["Manifest", "Node", "NodeInfo", "load_manifest"]
