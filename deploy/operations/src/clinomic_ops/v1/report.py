"""The account of a migration run: per collection how many documents were read, created, skipped as already
migrated and refused (by reason), every refusal and warning by v1 key, printed and written as JSON.

The report names records by v1 organisation and id, never by patient name; it is an operator's document.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinomic_ops.v1.mapping import COLLECTIONS, Problem


@dataclass
class Counts:
    read: int = 0
    created: int = 0
    skipped: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "created": self.created, "skipped_already_migrated": self.skipped,
                "refused": sum(self.refused.values()), "refused_by_reason": dict(sorted(self.refused.items()))}


@dataclass
class Report:
    source: str
    dry_run: bool
    org_filter: str | None
    skip_screenings: bool
    run_id: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    seconds: float = 0.0
    counts: dict[str, Counts] = field(default_factory=lambda: {c: Counts() for c in COLLECTIONS})
    refused: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    organizations: dict[str, dict[str, str]] = field(default_factory=dict)
    users_to_reset: int = 0
    events_published: int = 0
    events_left_in_outbox: int = 0

    def refuse(self, problem: Problem) -> None:
        self.refused.append(problem)
        self.counts[problem.collection].refused[problem.code] += 1

    def as_dict(self) -> dict[str, Any]:
        collections = [c for c in COLLECTIONS if not (c == "screenings" and self.skip_screenings)]
        return {
            "source": self.source, "dry_run": self.dry_run, "org_filter": self.org_filter,
            "skip_screenings": self.skip_screenings, "run_id": self.run_id, "started_at": self.started_at,
            "seconds": round(self.seconds, 2),
            "collections": {c: self.counts[c].as_dict() for c in collections},
            "organizations": self.organizations,
            "users_password_reset_required": self.users_to_reset,
            "audit_events": {"published": self.events_published, "left_in_outbox": self.events_left_in_outbox},
            "refused": [p.as_dict() for p in self.refused],
            "warnings": [p.as_dict() for p in self.warnings],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def lines(self) -> list[str]:
        """The printed summary: one line per collection, then the refusal reasons."""
        verb = "would create" if self.dry_run else "created"
        out = [f"{'DRY RUN: nothing was changed. ' if self.dry_run else ''}source {self.source}"]
        for name, counts in self.as_dict()["collections"].items():
            out.append(f"  {name:<14} read {counts['read']:>6}  {verb} {counts['created']:>6}  "
                       f"skipped (already migrated) {counts['skipped_already_migrated']:>6}  "
                       f"refused {counts['refused']:>6}")
            for reason, n in counts["refused_by_reason"].items():
                out.append(f"      refused {n} × {reason}")
        if self.warnings:
            out.append(f"  {len(self.warnings)} warning(s) (references left empty, names missing), see the report")
        if self.users_to_reset:
            out.append(f"  {self.users_to_reset} user(s) {'would need' if self.dry_run else 'need'} a password reset "
                       "(v1 bcrypt hashes are not kept: docs/v1-migration.md)")
        if not self.dry_run:
            out.append(f"  audit events published {self.events_published}, left in the outbox "
                       f"{self.events_left_in_outbox}")
        if self.events_left_in_outbox:
            out.append("  the broker was not reachable: the screening service's outbox relay publishes the rest "
                       "to the audit ledger when it runs")
        return out
