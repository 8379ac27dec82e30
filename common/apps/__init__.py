"""Commands that combine concepts: ``segment``, ``segment-archive``, ``demo``, ``reproduce`` and the label server."""
