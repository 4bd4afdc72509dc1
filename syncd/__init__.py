"""syncd — the real-time sync hub: stateless processes between SDK clients and Redis."""

__version__ = "0.1.0.dev0"
