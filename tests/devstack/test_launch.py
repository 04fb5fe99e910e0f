"""Service processes of the local platform import first and serve only once handed their environment
(``devstack.launch``), so their imports run while the infrastructure starts."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from devstack import infra
from devstack.stack import Platform, wait_ready

TARGET = "tests.devstack.launched_app:create_app"


def platform(tmp_path: Path) -> Platform:
    return Platform(urls={"probe": f"http://127.0.0.1:{infra.free_port()}"}, env={}, infra="",
                    logs={"probe": tmp_path / "probe.log"})


def test_a_launched_process_serves_with_the_environment_it_is_handed(tmp_path: Path) -> None:
    running = platform(tmp_path)
    running.launch("probe", TARGET)
    try:
        with pytest.raises(httpx.ConnectError):  # nothing listens before it is served
            httpx.get(running.urls["probe"])
        running.env = {"PATH": os.environ["PATH"], "PROBE": "handed over"}
        running.serve("probe")
        wait_ready("probe", running.urls["probe"], running.processes["probe"], running.logs["probe"], 30)
        assert httpx.get(f"{running.urls['probe']}/health/ready").text == "handed over"
    finally:
        running.stop()


def test_a_launched_process_that_is_never_served_ends_with_the_platform(tmp_path: Path) -> None:
    running = platform(tmp_path)
    running.launch("probe", TARGET)
    process = running.processes["probe"]
    assert process.stdin is not None
    process.stdin.close()  # what a platform that gave up before serving it leaves
    assert process.wait(30) == 0


def test_a_process_that_fails_to_import_is_reported_with_its_log(tmp_path: Path) -> None:
    running = platform(tmp_path)
    running.launch("probe", "tests.devstack.no_such_module:create_app")
    try:
        running.serve("probe")
        with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
            wait_ready("probe", running.urls["probe"], running.processes["probe"], running.logs["probe"], 30)
    finally:
        running.stop()
