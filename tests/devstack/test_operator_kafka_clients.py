"""The Kafka clients of operators' commands connect as the services do: ``clinomic deadletters list/replay``
and the example analytics consumer take the same TLS/SASL settings (``KAFKA_SECURITY_PROTOCOL`` and its
companions, docs/deployment.md). Pure: each client is built and inspected, no broker is contacted."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from devstack.cli import app
from shared.deadletter import dead_letter_reader, replay_producer
from tests.deployment.test_transport_security import ca_file  # noqa: F401 - the fixture

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "live_counts.py"
SASL_SSL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "ops", "KAFKA_SASL_PASSWORD": "kafka-password-never-printed"}


def connection(client: Any) -> dict[str, Any]:
    """What an aiokafka consumer's or producer's connections will use."""
    inner = getattr(client, "_client", None) or client.client
    return {"protocol": inner._security_protocol, "mechanism": inner._sasl_mechanism,
            "username": inner._sasl_plain_username, "password": inner._sasl_plain_password,
            "ca": [dict(f[0] for f in c["subject"])["commonName"] for c in inner._ssl_context.get_ca_certs()]
            if inner._ssl_context else None}


def example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/live_counts.py as a module (it is a script, outside every package)."""
    spec = importlib.util.spec_from_file_location("live_counts", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "live_counts", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def environment(monkeypatch: pytest.MonkeyPatch, ca: Path) -> None:
    for name, value in (SASL_SSL | {"KAFKA_SSL_CAFILE": str(ca)}).items():
        monkeypatch.setenv(name, value)


async def test_the_dead_letter_reader_and_replayer_take_tls_and_sasl_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path,  # noqa: F811
) -> None:
    environment(monkeypatch, ca_file)
    expected = {"protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "ops",
                "password": "kafka-password-never-printed", "ca": ["clinomic-test-ca"]}
    reader, producer = dead_letter_reader("kafka.invalid:9093"), replay_producer("kafka.invalid:9093")
    try:
        assert connection(reader) == expected
        assert connection(producer) == expected
    finally:
        await reader.stop()
        await producer.stop()


async def test_the_dead_letter_clients_stay_plaintext_without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*SASL_SSL, "KAFKA_SSL_CAFILE"]:
        monkeypatch.delenv(name, raising=False)
    reader = dead_letter_reader("127.0.0.1:9092")
    try:
        assert connection(reader) == {"protocol": "PLAINTEXT", "mechanism": "PLAIN", "username": None,
                                      "password": None, "ca": None}
    finally:
        await reader.stop()


@pytest.mark.parametrize("command", [["deadletters", "list"], ["deadletters", "replay", "--all"]])
def test_deadletter_commands_refuse_unusable_kafka_settings_before_connecting(
    monkeypatch: pytest.MonkeyPatch, command: list[str],
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, [*command, "--bootstrap", "kafka.invalid:9093"])
    assert result.exit_code == 2
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM" in result.output


async def test_the_example_consumer_takes_tls_and_sasl_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path,  # noqa: F811
) -> None:
    environment(monkeypatch, ca_file)
    live_counts = example(monkeypatch)
    args = live_counts.arguments().parse_args(["--bootstrap", "kafka.invalid:9093"])
    consumer = live_counts.consumer_for(args)
    try:
        assert connection(consumer) == {
            "protocol": "SASL_SSL", "mechanism": "SCRAM-SHA-512", "username": "ops",
            "password": "kafka-password-never-printed", "ca": ["clinomic-test-ca"]}
    finally:
        await consumer.stop()


async def test_the_example_consumers_options_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path,  # noqa: F811
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    live_counts = example(monkeypatch)
    args = live_counts.arguments().parse_args([
        "--bootstrap", "kafka.invalid:9093", "--security-protocol", "SASL_PLAINTEXT",
        "--sasl-mechanism", "PLAIN", "--sasl-username", "analytics", "--sasl-password", "pw"])
    consumer = live_counts.consumer_for(args)
    try:
        assert connection(consumer) == {"protocol": "SASL_PLAINTEXT", "mechanism": "PLAIN",
                                        "username": "analytics", "password": "pw", "ca": None}
    finally:
        await consumer.stop()


def test_the_example_consumer_refuses_sasl_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*SASL_SSL, "KAFKA_SSL_CAFILE"]:
        monkeypatch.delenv(name, raising=False)
    live_counts = example(monkeypatch)
    args: argparse.Namespace = live_counts.arguments().parse_args(["--security-protocol", "SASL_SSL"])
    with pytest.raises(SystemExit, match="SASL_SSL needs --sasl-mechanism"):
        live_counts.security_options(args)


