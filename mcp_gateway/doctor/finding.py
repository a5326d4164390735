"""One row of the doctor's table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Finding", "Status"]


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Finding:
    """What was checked (``check``), on what (``subject``), the verdict and the reason for it."""

    check: str
    subject: str
    status: Status
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "subject": self.subject, "status": self.status.value, "reason": self.reason}
