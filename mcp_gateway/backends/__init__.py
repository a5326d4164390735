"""Backends: where an authorised call goes. Each kind of tool is one module here."""

__all__: list[str] = []
