"""A connection the broker has just closed fails as a connection error under uvloop too (the services' loop).

Under uvloop a write to a closed transport raises RuntimeError, which aiokafka 0.14 does not expect: raised in
a client's metadata task it ended that task, and its consumer group never found its coordinator again after a
broker restart (docs/reliability.md). ``shared.kafka`` makes it the KafkaConnectionError aiokafka handles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

import shared.kafka  # noqa: F401  (installs the conversion)
from devstack.infra import BundledBroker, free_port


@pytest.fixture(scope="module")
def broker() -> Iterator[BundledBroker]:
    running = BundledBroker(free_port(), None)
    running.start()
    yield running
    running.stop()


async def send_on_a_transport_closed_under_aiokafka(port: int) -> BaseException | None:
    conn = await create_conn("127.0.0.1", port, request_timeout_ms=5_000)
    try:
        conn._writer.transport.close()  # what the broker's restart does, before aiokafka's reader notices
        await asyncio.sleep(0)
        await conn.send(MetadataRequest([]))
    except BaseException as exc:  # noqa: BLE001 - the exception's type is what is tested
        return exc
    finally:
        conn.close()
    return None


def test_a_request_on_a_connection_the_broker_closed_is_a_connection_error_under_uvloop(
    broker: BundledBroker,
) -> None:
    raised = uvloop.run(send_on_a_transport_closed_under_aiokafka(broker.port))
    assert isinstance(raised, KafkaConnectionError), repr(raised)
