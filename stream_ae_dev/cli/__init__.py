"""The ``stream-ae`` commands of the development tools: ``dev-stack``, ``demo``, ``bench``."""
