"""Storage: engines, tables and the SQL the rest of the package needs."""

__all__: list[str] = []
