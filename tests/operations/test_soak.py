"""The soak command's measurements, on a short run against the test platform: every answer counted, every
service's memory read, the backlog drained. (The 10-minute soak itself is ``clinomic soak``; its figures are
printed, not asserted.)"""

from __future__ import annotations

from devstack import soak
from devstack.stack import Platform


async def test_a_short_soak_counts_every_answer_reads_every_service_and_drains(platform: Platform) -> None:
    pids = {name: process.pid for name, process in platform.processes.items()}
    report = await soak.soak(platform.gateway_url, platform.env["DATABASE_URL"], rate=4, seconds=4, window=2,
                             pids=pids, patients=6, echo=lambda line: None)
    summary = report.summary()
    assert len(report.windows) == 2
    sent = sum(w.sent for w in report.windows)
    assert sent >= 12 and sum(summary["answers"].values()) == sent  # type: ignore[union-attr]
    assert summary["errors"] == 0, summary["answers"]
    assert all(window.rss[name] for window in report.windows for name in pids)
    assert set(summary["rss_growth_first_to_last_window"]) == set(pids)  # type: ignore[arg-type]
    assert summary["final_intake_backlog"] == 0


def test_memory_of_this_process_is_read_and_of_a_missing_one_is_none() -> None:
    import os

    assert (soak.rss_bytes(os.getpid()) or 0) > 10 * 2**20
    assert soak.rss_bytes(2**22 + 12345) is None
