#!/usr/bin/env python3
"""An HTTP/3 client that is not ours (aioquic) speaking uplink's wire protocol.

Used by tests/e2e/tests/http3.rs. Prints one JSON object on stdout; exits non-zero (with the
reason on stderr) when anything is off. Everything it computes (SHA-256, CRC32C, HKDF,
HMAC, the bearer credential and chunk secret derived from the token file's secret) is done
here from the protocol description, not by calling uplink code.

--secret is the token file's secret; --bearer the credential `uplink-server --print-bearer`
printed: the script derives its own and refuses to go on if the two differ.

  h3_put.py put    --port P --ca CA.pem --secret S --bearer B
      create an upload, PUT its one chunk, GET the state and the chunk list: the chunk must
      be listed.
  h3_put.py zero-rtt --port P --ca CA.pem --secret S --bearer B
      connection 1 creates an upload, PUTs the chunk and keeps the session ticket;
      connection 2 resumes with it and sends, as 0-RTT, POST complete, DELETE and the same
      chunk PUT again, while holding back the server's handshake flight for HOLD seconds so
      the server must decide on them before the handshake finishes. Then, on the finished
      connection 2, complete again (it must now be judged on its merits) and GET the state;
      connection 3 (full handshake, no ticket) DELETEs as its first request.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted

# Long enough that the server has read and judged the early requests many times over.
HOLD = 1.0
CHUNK_SIZE = 300_000


def crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), reflected, init and final xor 0xFFFFFFFF."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869; no salt (b"") is the same as HashLen zero bytes."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


class Keys:
    """What the client derives from the token file's secret; the secret is never sent."""

    def __init__(self, secret: str):
        ikm = secret.strip().encode()
        self.bearer = hkdf_sha256(ikm, b"", b"uplink bearer v1").hex()
        self.chunk_secret = hkdf_sha256(ikm, b"", b"uplink chunk-secret v1")

    def auth(self):
        return [(b"authorization", f"Bearer {self.bearer}".encode())]


def chunk_headers(keys: Keys, upload_id: str, nonce_hex: str, offset: int, data: bytes):
    sha = hashlib.sha256(data).digest()
    nonce = bytes.fromhex(nonce_hex)
    key = hkdf_sha256(keys.chunk_secret, nonce, b"uplink chunk v1" + upload_id.encode())
    msg = (
        offset.to_bytes(8, "little")
        + len(data).to_bytes(8, "little")
        + sha
        + upload_id.encode()
        + nonce
    )
    tag = hmac.new(key, msg, hashlib.sha256).hexdigest()
    return [
        (b"x-chunk-length", str(len(data)).encode()),
        (b"x-chunk-sha256", sha.hex().encode()),
        (b"x-chunk-crc32c", f"{crc32c(data):08x}".encode()),
        (b"x-chunk-hmac", tag.encode()),
    ]


class H3Client(QuicConnectionProtocol):
    """One HTTP/3 connection; optionally holds back what the server sends at first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.responses = {}
        self.early_data_accepted = None
        # aioquic's own wait_connected() hangs if the handshake finished before it is
        # called, which is the case here after 0-RTT; track it ourselves.
        self.handshake_done = self._loop.create_future()
        self._held = None

    def hold_incoming(self, seconds: float):
        self._held = []
        self._loop.call_later(seconds, self._release)

    def _release(self):
        held, self._held = self._held, None
        for data, addr in held:
            super().datagram_received(data, addr)

    def datagram_received(self, data, addr):
        if self._held is not None:
            self._held.append((data, addr))
        else:
            super().datagram_received(data, addr)

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.early_data_accepted = event.early_data_accepted
            if not self.handshake_done.done():
                self.handshake_done.set_result(None)
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                r = self.responses.get(ev.stream_id)
                if r is None:
                    continue
                if isinstance(ev, HeadersReceived):
                    r["headers"] = dict(ev.headers)
                else:
                    r["body"] += ev.data
                if ev.stream_ended and not r["done"].done():
                    r["done"].set_result(None)

    def start(self, authority, method, path, headers=(), body=b"", transmit=True):
        """Sends a request; returns a future for (status, headers, body)."""
        sid = self._quic.get_next_available_stream_id()
        self.responses[sid] = {
            "headers": {},
            "body": b"",
            "done": self._loop.create_future(),
        }
        self.h3.send_headers(
            sid,
            [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ]
            + list(headers),
            end_stream=not body,
        )
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        if transmit:
            self.transmit()
        return self._finish(sid)

    async def _finish(self, sid):
        r = self.responses[sid]
        await asyncio.wait_for(r["done"], 20)
        status = int(r["headers"].get(b":status", b"0"))
        return status, r["headers"], r["body"]


def config(ca, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    c.load_verify_locations(ca)
    c.server_name = "localhost"
    c.session_ticket = ticket
    return c


def fail(msg):
    print(f"h3_put.py: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(what, resp, *statuses):
    status, _, body = resp
    if status not in statuses:
        fail(f"{what}: HTTP {status}, wanted {statuses}: {body[:300]!r}")
    return json.loads(body) if body else None


def chunk_bytes():
    out = b""
    i = 0
    while len(out) < CHUNK_SIZE:
        out += hashlib.sha256(i.to_bytes(8, "little")).digest()
        i += 1
    return out[:CHUNK_SIZE]


async def create_and_put(proto, authority, keys, key, data):
    auth = keys.auth()
    create = json.dumps({"size": len(data), "name": "interop.bin", "metadata": {}}).encode()
    created = expect(
        "create",
        await proto.start(
            authority,
            "POST",
            "/v1/uploads",
            auth + [(b"idempotency-key", key.encode()), (b"content-type", b"application/json")],
            create,
        ),
        201,
    )
    uid, nonce = created["upload_id"], created["nonce"]
    put = await proto.start(
        authority,
        "PUT",
        f"/v1/uploads/{uid}/chunks/0",
        auth + chunk_headers(keys, uid, nonce, 0, data),
        data,
    )
    stored = expect("chunk PUT", put, 200, 201)
    return uid, nonce, stored


async def get_state(proto, authority, keys, uid):
    return expect(
        "GET state", await proto.start(authority, "GET", f"/v1/uploads/{uid}", keys.auth()), 200
    )


async def get_chunk_page(proto, authority, keys, uid):
    return expect(
        "GET chunks",
        await proto.start(authority, "GET", f"/v1/uploads/{uid}/chunks?from=0", keys.auth()),
        200,
    )


async def run_put(args, keys):
    authority = f"localhost:{args.port}"
    data = chunk_bytes()
    async with connect(
        "127.0.0.1", args.port, configuration=config(args.ca), create_protocol=H3Client
    ) as proto:
        uid, _, stored = await create_and_put(proto, authority, keys, "interop-put", data)
        state = await get_state(proto, authority, keys, uid)
        page = await get_chunk_page(proto, authority, keys, uid)
    if state["ranges"] != [[0, len(data)]]:
        fail(f"the state does not hold the chunk's range: {state}")
    listed = [c for c in page["chunks"] if c["offset"] == 0 and c["length"] == len(data)]
    if not listed or listed[0]["sha256"] != hashlib.sha256(data).hexdigest():
        fail(f"chunk not listed in the chunk page: {page}")
    print(json.dumps({"upload_id": uid, "stored": stored, "state": state, "page": page}))


async def run_zero_rtt(args, keys):
    authority = f"localhost:{args.port}"
    data = chunk_bytes()
    tickets = []
    async with connect(
        "127.0.0.1",
        args.port,
        configuration=config(args.ca),
        create_protocol=H3Client,
        session_ticket_handler=tickets.append,
    ) as proto:
        uid, nonce, _ = await create_and_put(proto, authority, keys, "interop-0rtt", data)
        for _ in range(100):
            if tickets:
                break
            await asyncio.sleep(0.02)
    if not tickets:
        fail("the server sent no session ticket")

    auth = keys.auth()
    out = {"upload_id": uid}
    async with connect(
        "127.0.0.1",
        args.port,
        configuration=config(args.ca, tickets[-1]),
        create_protocol=H3Client,
        wait_connected=False,
    ) as proto:
        proto.hold_incoming(HOLD)
        # Nothing has been sent yet: these requests leave in the first flight, as 0-RTT.
        complete = proto.start(
            authority,
            "POST",
            f"/v1/uploads/{uid}/complete",
            auth + [(b"content-type", b"application/json")],
            json.dumps({"merkle_root": "00" * 32}).encode(),
            transmit=False,
        )
        delete = proto.start(authority, "DELETE", f"/v1/uploads/{uid}", auth, transmit=False)
        replay = proto.start(
            authority,
            "PUT",
            f"/v1/uploads/{uid}/chunks/0",
            auth + chunk_headers(keys, uid, nonce, 0, data),
            data,
            transmit=False,
        )
        proto.transmit()
        results = await asyncio.gather(complete, delete, replay)
        await asyncio.wait_for(proto.handshake_done, 20)
        out["early_data_accepted"] = proto.early_data_accepted
        for name, (status, _, body) in zip(["complete", "delete", "put"], results):
            out[name] = {"status": status, "body": json.loads(body) if body else None}
        # The handshake is done now: the same request runs (and fails on its merits: the
        # Merkle root is wrong on purpose, so nothing is assembled).
        status, _, body = await proto.start(
            authority,
            "POST",
            f"/v1/uploads/{uid}/complete",
            auth + [(b"content-type", b"application/json")],
            json.dumps({"merkle_root": "00" * 32}).encode(),
        )
        out["complete_after_handshake"] = {
            "status": status,
            "body": json.loads(body) if body else None,
        }
        out["state_after"] = await get_state(proto, authority, keys, uid)
    # A fresh connection without a ticket (full handshake): its very first request may delete.
    async with connect(
        "127.0.0.1", args.port, configuration=config(args.ca), create_protocol=H3Client
    ) as proto:
        status, _, _ = await proto.start(authority, "DELETE", f"/v1/uploads/{uid}", auth)
        out["delete_1rtt"] = {"status": status}
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["put", "zero-rtt"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--secret", required=True, help="the token file's secret")
    p.add_argument("--bearer", required=True, help="what uplink-server --print-bearer printed")
    args = p.parse_args()
    keys = Keys(args.secret)
    if keys.bearer != args.bearer:
        fail(f"derived bearer {keys.bearer} differs from the server's {args.bearer}")
    asyncio.run(run_put(args, keys) if args.mode == "put" else run_zero_rtt(args, keys))


if __name__ == "__main__":
    main()
