"""TLS and SASL towards Kafka and TLS towards PostgreSQL, from the environment: a bad combination stops a
service with one line naming the variables (never their values); a good one reaches every client."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import struct
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.db import create_engine
from shared.kafka import client_options, kafka_security, make_broker
from shared.settings import CommonSettings, load_or_exit

SASL = {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "clinomic-services",
        "KAFKA_SASL_PASSWORD": "kafka-password-never-printed"}
#: PostgreSQL's first message: SSLRequest asks for TLS, StartupMessage (protocol 3.0) does not.
SSL_REQUEST, STARTUP = 80877103, 196608


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A self-signed CA certificate (PEM), as Strimzi's cluster CA or CloudNativePG's would be."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinomic-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def refusal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_or_exit(CommonSettings, "auth")
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    return line


def test_sasl_without_credentials_is_refused_naming_what_is_missing(monkeypatch, capsys) -> None:
    line = refusal(monkeypatch, capsys, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="PLAIN")
    assert line == ("auth: refusing to start: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME, "
                    "KAFKA_SASL_PASSWORD")


def test_credentials_without_sasl_are_refused_without_printing_them(monkeypatch, capsys) -> None:
    line = refusal(monkeypatch, capsys, KAFKA_SECURITY_PROTOCOL="SSL", **SASL)
    assert "KAFKA_SASL_PASSWORD" in line and "sends no credentials" in line
    assert SASL["KAFKA_SASL_PASSWORD"] not in line


def test_tls_files_without_tls_are_refused(monkeypatch, capsys, ca_file: Path) -> None:
    line = refusal(monkeypatch, capsys, KAFKA_SSL_CAFILE=str(ca_file))
    assert line.endswith("KAFKA_SSL_CAFILE set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT uses no TLS")


def test_a_missing_certificate_file_is_refused(monkeypatch, capsys, tmp_path: Path) -> None:
    line = refusal(monkeypatch, capsys, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(tmp_path / "no"))
    assert line.startswith("auth: refusing to start: KAFKA_SSL_CAFILE: ")


def test_an_unknown_mechanism_is_refused_without_echoing_it(monkeypatch, capsys) -> None:
    line = refusal(monkeypatch, capsys, **(SASL | {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                                  "KAFKA_SASL_MECHANISM": "typed-secret-by-mistake"}))
    assert line.startswith("auth: refusing to start: KAFKA_SASL_MECHANISM: ")
    assert "typed-secret-by-mistake" not in line


def test_verified_postgresql_tls_needs_the_servers_ca(monkeypatch, capsys) -> None:
    line = refusal(monkeypatch, capsys, PGSSLMODE="verify-full")
    assert line == "auth: refusing to start: PGSSLMODE=verify-full needs PGSSLROOTCERT (the server's CA)"


def test_plaintext_clients_get_no_security_options() -> None:
    assert client_options(CommonSettings()) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_options_carry_protocol_mechanism_and_credentials(protocol: str, mechanism: str) -> None:
    settings = CommonSettings(kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism,
                              kafka_sasl_username="svc", kafka_sasl_password="pw")
    options = client_options(settings)
    assert (options["security_protocol"], options["sasl_mechanism"]) == (protocol, mechanism)
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "pw")
    assert (options["ssl_context"] is not None) == (protocol == "SASL_SSL")


def test_tls_trusts_the_configured_ca_and_checks_hostnames(ca_file: Path) -> None:
    security = kafka_security(CommonSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca_file))
    assert security is not None and security.ssl_context is not None
    context = security.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(field[0] for field in ca["subject"]) for ca in context.get_ca_certs()] == [
        {"commonName": "clinomic-test-ca"}]


@pytest.mark.parametrize("protocol", ["SSL", "SASL_PLAINTEXT", "SASL_SSL"])
async def test_aiokafka_accepts_the_options(protocol: str, ca_file: Path) -> None:
    sasl = {"kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "svc",
            "kafka_sasl_password": "pw"}
    settings = CommonSettings(kafka_security_protocol=protocol,
                              kafka_ssl_cafile=ca_file if protocol.endswith("SSL") else None,
                              **(sasl if protocol.startswith("SASL_") else {}))
    AIOKafkaAdminClient(bootstrap_servers="kafka.invalid:9093", **client_options(settings))


def test_broker_consumers_connect_with_the_configured_security() -> None:
    settings = CommonSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                              kafka_sasl_username="svc", kafka_sasl_password="pw")
    consumer_options = make_broker(settings, "clinomic-test").config.broker_config.builder.keywords
    wanted = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "svc"}
    assert {k: consumer_options[k] for k in wanted} == wanted


async def first_message_of_a_connection(monkeypatch: pytest.MonkeyPatch, sslmode: str) -> int:
    """The code of the first message our engine sends to a PostgreSQL address with ``PGSSLMODE`` set; the
    listener answers nothing and closes, so the connection attempt itself fails."""
    monkeypatch.setenv("PGSSLMODE", sslmode)
    received: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _length, code = struct.unpack("!ii", await reader.readexactly(8))
        received.set_result(code)
        writer.close()

    server = await asyncio.start_server(listen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = create_engine(f"postgresql+asyncpg://clinomic@127.0.0.1:{port}/clinomic",
                           application_name="clinomic-test")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the listener is no database: only its first bytes count
            async with engine.connect():
                pass
        return await asyncio.wait_for(received, 10)
    finally:
        await engine.dispose()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("sslmode", "first"), [("require", SSL_REQUEST), ("disable", STARTUP)])
async def test_pgsslmode_decides_whether_database_connections_ask_for_tls(monkeypatch, sslmode: str,
                                                                          first: int) -> None:
    assert await first_message_of_a_connection(monkeypatch, sslmode) == first
