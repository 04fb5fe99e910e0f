"""Generated Clinomic v1 data for the migration tests: documents shaped as v1 wrote them (see the v1 fact sheet
in docs/v1-migration.md), written as a mongodump directory with ``bson``, and served by a small MongoDB
stand-in speaking enough of the wire protocol for pymongo's ``MongoClient`` (no MongoDB server can run here).

Every data set names its organisations and users with a random suffix: the session platform is shared, and
usernames are global in this platform.
"""

from __future__ import annotations

import itertools
import socket
import socketserver
import struct
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
from bson import ObjectId
from cryptography.fernet import Fernet

V1_COLLECTIONS = ("users", "labs", "doctors", "patients", "consents", "screenings", "audit_logs")
HASH = "ab" * 32


def iso(day: int, hour: int = 9) -> str:
    return datetime(2025, 1, day, hour, 4, 5, 678901, tzinfo=UTC).isoformat()


@dataclass
class V1Data:
    """Two organisations of v1 with the defects the migration must report: an orphan screening and consent, a
    duplicate patient, a CBC outside our ranges, an unknown role, a patient without a name, a name no key
    opens, a patient referring to an unknown lab; and an inactive user."""

    key: bytes = field(default_factory=Fernet.generate_key)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6].upper())
    collections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fernet = Fernet(self.key)
        self.org_a, self.org_b = f"ORG-LAB-{self.suffix}-A", f"ORG-LAB-{self.suffix}-B"
        self.collections = {c: [] for c in V1_COLLECTIONS}
        self.build()

    def add(self, collection: str, doc: dict[str, Any]) -> dict[str, Any]:
        doc = {"_id": ObjectId(), **doc}
        self.collections[collection].append(doc)
        return doc

    def name(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode()).decode()

    def user(self, org: str, username: str, role: str, active: bool = True) -> None:
        self.add("users", {"id": username, "orgId": org, "name": f"{username} display", "role": role,
                           "passwordHash": "$2b$12$" + "x" * 53, "isActive": active, "createdAt": iso(1),
                           "updatedAt": iso(3)})

    def patient(self, org: str, pid: str, name: str, **extra: Any) -> None:
        self.add("patients", {"id": pid, "orgId": org, "name": name, "age": 45, "sex": "F",
                              "labId": f"LAB-{self.suffix}", "doctorId": "D201", "createdAt": iso(2),
                              "updatedAt": iso(3)} | extra)

    def screening(self, org: str, pid: str, **extra: Any) -> str:
        sid = str(uuid.uuid4())
        self.add("screenings", {
            "id": sid, "orgId": org, "patientId": pid, "userId": f"lab_{self.suffix}",
            "labId": f"LAB-{self.suffix}", "doctorId": "D201", "riskClass": 2, "label": 2, "labelText": "BORDERLINE",
            "probabilities": {"normal": 0.4, "borderline": 0.1, "deficient": 0.5}, "rulesFired": ["High RDW"],
            "modelVersion": "1.0.0", "modelArtifactHash": HASH, "requestHash": HASH, "responseHash": HASH,
            "screeningHash": HASH, "fileId": None,
            "indices": {"mentzer": 22.1, "greenKing": 138.1, "nlr": 2.0, "pancytopenia": 0},
            "cbcSnapshot": {"mcv": 99.0, "hb": 11.0, "rdw": 15.5}, "createdAt": iso(4)} | extra)
        return sid

    def build(self) -> None:
        s, a, b = self.suffix, self.org_a, self.org_b
        self.user(a, f"admin_{s}", "ADMIN")
        self.user(a, f"lab_{s}", "LAB")
        self.user(a, f"doctor_{s}", "DOCTOR")
        self.user(a, f"super_{s}", "SUPERUSER")  # unknown role
        self.user(a, f"gone_{s}", "LAB", active=False)
        self.user(b, f"lab_{s}", "LAB")  # same username in the other organisation
        self.add("labs", {"id": f"LAB-{s}", "name": "Lab Placeholder", "tier": "Enterprise", "orgId": a})
        self.add("doctors", {"id": "D201", "name": "Dr. Placeholder", "dept": "Hematology", "labId": f"LAB-{s}",
                             "orgId": a})
        self.patient(a, "PID-0001", self.name("Jane Example"))
        self.patient(a, "PID-0002", "")  # no name in v1
        self.patient(a, "PID-0001", self.name("Jane Duplicate"))  # duplicate id: refused
        self.patient(a, "PID-0003", Fernet(Fernet.generate_key()).encrypt(b"Lost Key").decode())  # undecryptable
        self.patient(a, "PID-0004", self.name("John Example"), labId="LAB-GONE", sex="m")  # unknown lab
        self.patient(b, "PID-0001", self.name("Other Org Patient"), labId="", doctorId=None)
        self.screening_ok = self.screening(a, "PID-0001")
        self.screening(a, "PID-0002", riskClass=1, label=1, labelText="Normal",
                       probabilities={"normal": 0.9, "borderline": 0.07, "deficient": 0.03})
        self.screening_bad_cbc = self.screening(a, "PID-0001", cbcSnapshot={"mcv": 99.0, "hb": 112.0, "rdw": 15.5})
        self.screening_orphan = self.screening(a, "PID-9999")
        self.screening(a, "PID-0003")  # its patient is refused (name)
        self.screening(b, "PID-0001", riskClass=3, label=3, labelText="DEFICIENT", userId=f"lab_{s}",
                       probabilities={"normal": 0.05, "borderline": 0.05, "deficient": 0.9}, labId=None)
        self.add("screenings", {**self.collections["screenings"][0], "_id": ObjectId()})  # exact duplicate
        self.consent_ok = str(uuid.uuid4())
        self.add("consents", {"id": self.consent_ok, "orgId": a, "patientId": "PID-0001", "patientName": None,
                              "consentType": "written", "witnessName": "Witness Person", "recordedBy": f"lab_{s}",
                              "notes": None, "purposes": ["B12 screening of my blood count."], "status": "revoked",
                              "consentedAt": iso(2), "createdAt": iso(2), "revokedAt": iso(5),
                              "revokedBy": f"admin_{s}"})
        self.add("consents", {"id": str(uuid.uuid4()), "orgId": a, "patientId": "PID-7777", "consentType": "verbal",
                              "recordedBy": f"lab_{s}", "purposes": [], "status": "active", "consentedAt": iso(2),
                              "createdAt": iso(2)})  # orphan
        self.add("audit_logs", {"actor": f"lab_{s}", "orgId": a, "action": "LOGIN", "entity": "USER",
                                "details": {}, "timestamp": iso(1), "requestId": None, "prevHash": "0" * 64,
                                "eventHash": HASH})  # not migrated

    def expected(self, org: str | None = None) -> dict[str, dict[str, int]]:
        """What a first run reports per collection: created and refused counts."""
        a = {"organizations": (1, 0), "users": (4, 1), "labs": (1, 0), "doctors": (1, 0), "patients": (3, 2),
             "consents": (1, 1), "screenings": (2, 4)}
        b = {"organizations": (1, 0), "users": (1, 0), "labs": (0, 0), "doctors": (0, 0), "patients": (1, 0),
             "consents": (0, 0), "screenings": (1, 0)}
        chosen = [a] if org == self.org_a else [b] if org == self.org_b else [a, b]
        return {c: {"created": sum(x[c][0] for x in chosen), "refused": sum(x[c][1] for x in chosen)} for c in a}


def write_dump(data: V1Data, root: Path, *, database: str = "clinomic") -> Path:
    """A mongodump directory: ``root/<database>/<collection>.bson`` (+ a metadata file, as mongodump writes)."""
    target = root / database
    target.mkdir(parents=True, exist_ok=True)
    for collection, docs in data.collections.items():
        (target / f"{collection}.bson").write_bytes(b"".join(bson.encode(d) for d in docs))
        (target / f"{collection}.metadata.json").write_text('{"indexes": []}', encoding="utf-8")
    return root


# -- a MongoDB stand-in -----------------------------------------------------------------------------------------

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            header = _read(self.request, 16)
            if header is None:
                return
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            body = _read(self.request, length - 16)
            if body is None:
                return
            if opcode == OP_QUERY:
                flags_end = 4
                name_end = body.index(b"\0", flags_end)
                start = name_end + 9  # after numberToSkip and numberToReturn
                command = bson.decode(body[start:start + struct.unpack("<i", body[start:start + 4])[0]])
                reply = self.server.answer(command, body[flags_end:name_end].decode().split(".")[0])
                payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(reply)
                self._send(request_id, OP_REPLY, payload)
            elif opcode == OP_MSG:
                command = bson.decode(body[5:5 + struct.unpack("<i", body[5:9])[0]])
                reply = self.server.answer(command, command.get("$db", "admin"))
                self._send(request_id, OP_MSG, struct.pack("<I", 0) + b"\0" + bson.encode(reply))
            else:
                return

    def _send(self, response_to: int, opcode: int, payload: bytes) -> None:
        self.request.sendall(struct.pack("<iiii", 16 + len(payload), 0, response_to, opcode) + payload)


def _read(sock: socket.socket, n: int) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, databases: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.databases = databases
        self.cursors: dict[int, tuple[str, list[dict[str, Any]]]] = {}
        self.next_cursor = itertools.count(1)
        self.commands: list[str] = []
        self.lock = threading.Lock()

    def answer(self, command: dict[str, Any], db: str) -> dict[str, Any]:
        name = next(iter(command))
        self.commands.append(name)
        if name.lower() in ("hello", "ismaster"):
            return {"ismaster": True, "isWritablePrimary": True, "helloOk": True, "maxBsonObjectSize": 16 * 1024 ** 2,
                    "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
                    "localTime": datetime.now(UTC), "minWireVersion": 0, "maxWireVersion": 21, "connectionId": 1,
                    "ok": 1.0}
        if name in ("ping", "endSessions", "killCursors"):
            return {"ok": 1.0}
        collections = self.databases.get(db, {})
        if name == "listCollections":
            batch = [{"name": c, "type": "collection", "options": {}, "info": {"readOnly": False}}
                     for c in collections]
            return {"cursor": {"id": 0, "ns": f"{db}.$cmd.listCollections", "firstBatch": batch}, "ok": 1.0}
        if name == "find":
            wanted = command.get("filter") or {}
            docs = [d for d in collections.get(command["find"], []) if all(d.get(k) == v for k, v in wanted.items())]
            return self._batch(f"{db}.{command['find']}", docs, command.get("batchSize") or 101, "firstBatch")
        if name == "getMore":
            with self.lock:
                ns, rest = self.cursors.pop(int(command["getMore"]))
            return self._batch(ns, rest, command.get("batchSize") or 101, "nextBatch")
        return {"ok": 0.0, "errmsg": f"no such command: {name}", "code": 59}

    def _batch(self, ns: str, docs: list[dict[str, Any]], size: int, key: str) -> dict[str, Any]:
        cursor = 0
        if len(docs) > size:
            with self.lock:
                cursor = next(self.next_cursor)
                self.cursors[cursor] = (ns, docs[size:])
        return {"cursor": {"id": bson.Int64(cursor), "ns": ns, key: docs[:size]}, "ok": 1.0}


@contextmanager
def mongo_stand_in(databases: dict[str, dict[str, list[dict[str, Any]]]]) -> Iterator[_Server]:
    """A MongoDB stand-in on 127.0.0.1 (``server.server_address``) serving ``databases`` read-only: handshake
    (OP_QUERY isMaster or OP_MSG hello), ping, listCollections, find with equality filters, getMore."""
    server = _Server(databases)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
