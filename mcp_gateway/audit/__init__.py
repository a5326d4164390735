"""The evidence plane: the hash-chained trail (log), signed checkpoints, verification and export."""

__all__: list[str] = []
