"""Casbin itself, the only module that imports it: its reading of ``model.conf``, and its enforcer as the reference.

Casbin evaluates its matcher once per policy line (about 6 µs each), so it never runs on the request path: the
gateway decides with :class:`~mcp_gateway.policy.PolicySnapshot`, checks with :func:`model_assertions` that the
model file is the model compiled there, and the tests prove with :func:`build_enforcer` that both decide alike.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeAlias

import casbin

from mcp_gateway.errors import ConfigError

__all__ = ["MATCHER", "Enforcer", "build_enforcer", "model_assertions"]

MATCHER = "toolMatch"

Enforcer: TypeAlias = casbin.Enforcer


def _silence_casbin_logging() -> None:
    # Enforcer(enable_log=False) disables these loggers, but only after logging the model at INFO; while
    # enabled, Casbin logs every denied request as a WARNING.
    for name in ("casbin", "casbin.policy", "casbin.enforcer", "casbin.role"):
        logging.getLogger(name).disabled = True


def model_assertions(text: str, source: str) -> dict[tuple[str, str], str]:
    """Casbin's reading of a model, as ``(section, key) -> value``, e.g. ``("e", "e") -> "some(...)"``.

    Raises:
        ConfigError: Casbin cannot load the model, or its enforcer refuses it (such as an effect expression
            it does not know); the message starts with ``source``.
    """
    _silence_casbin_logging()
    model = casbin.Model()
    try:
        model.load_model_from_text(text)
        casbin.Enforcer(model)  # also checks what only the enforcer does, such as the effect expression
    except RuntimeError as exc:
        raise ConfigError(f"{source}: Casbin cannot load it: {exc}") from exc
    return {(section, key): assertion.value for section, keys in model.items() for key, assertion in keys.items()}


class _FilesAdapter(casbin.Adapter):
    """Casbin's own file adapter, applied to several files in turn."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = paths

    def load_policy(self, model: casbin.Model) -> None:
        for path in self._paths:
            casbin.FileAdapter(str(path)).load_policy(model)


def _reference_tool_match(tool: str, pattern: str) -> bool:
    # An independent implementation on purpose: patterns hold no fnmatch metacharacter but "*" (validated).
    return fnmatch.fnmatchcase(tool, pattern)


def build_enforcer(model: Path, csvs: Sequence[Path], extra_groupings: Iterable[tuple[str, str]] = ()) -> Enforcer:
    """Casbin's enforcer over ``model`` and the ``csvs`` in order, as its own file adapter reads them.

    Nothing is validated here: :func:`~mcp_gateway.policy.casbin_enforcer` checks the files first.
    """
    _silence_casbin_logging()
    enforcer = casbin.Enforcer(str(model), _FilesAdapter(csvs))
    enforcer.add_function(MATCHER, _reference_tool_match)
    for member, role in extra_groupings:
        enforcer.add_grouping_policy(member, role)
    return enforcer
