"""``./run`` (``clinomic run``) refuses to start when a port of its services is held by another process: it used
to declare itself ready on the strength of another platform's answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devstack import stack
from devstack.cli import app


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_held_port_is_refused_naming_the_port_and_its_service(held_port: int) -> None:
    with pytest.raises(stack.PortTaken, match=f"port {held_port} \\(screening\\) is already in use"):
        stack.check_ports_free({"gateway": stack.infra.free_port(), "screening": held_port})


def test_a_port_whose_connections_are_still_closing_counts_as_free() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's, of a stopped platform
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the listening side closes first: its end of the connection lingers in TIME_WAIT
        client.close()
    assert not stack.port_in_use(port)


def test_run_stops_before_starting_anything_when_a_port_is_held(
    held_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = {name: stack.infra.free_port() for name in stack.DEFAULT_PORTS} | {"gateway": held_port}
    monkeypatch.setattr(stack, "DEFAULT_PORTS", ports)
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["run", "--state-dir", str(state)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        (f"error: port {held_port} (gateway) is already in use, probably by another Clinomic platform: stop "
         f"it (`ss -ltnp 'sport = :{held_port}'` shows which process holds it) and start again")]
    assert not state.exists()
