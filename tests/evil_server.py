"""A loopback Open Inference Protocol server whose inference answers attack the client's memory and time.

    python tests/evil_server.py --mode lie|endless|drip|huge --ready port.txt

Metadata is honest (the linear model of tests/fake_endpoint.py), so the client gets as far as an infer
request; then, by ``--mode``:

- ``lie``: claims a 2 GiB Content-Length and streams zeros for as long as the client reads;
- ``endless``: a chunked answer that never ends;
- ``drip``: a 100 kB answer sent one byte a second;
- ``huge``: a valid JSON answer of 20 million floats (about 80 MB), chunked, without a Content-Length.

It is written on raw sockets, since an honest HTTP library would not let it lie.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting_server import META  # noqa: E402
from fake_endpoint import MODEL  # noqa: E402

CHUNK = b"\0" * 65536


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _read_request(conn: socket.socket) -> tuple[str, str] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return None
        data += part
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = next((int(v) for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                   if k.strip().lower() == "content-length"), 0)
    while len(rest) < length:
        part = conn.recv(min(1 << 20, length - len(rest)))
        if not part:
            return None
        rest += part
    return method, path


def _json(conn: socket.socket, doc: object, status: str = "200 OK") -> None:
    body = json.dumps(doc).encode()
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body)


def _attack(conn: socket.socket, mode: str) -> None:
    if mode == "lie":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n")
        while True:
            conn.sendall(CHUNK)
    if mode == "endless":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(_chunk(b'{"outputs": [{"name": "probs", "datatype": "FP32", "shape": [1, 2], "data": ['))
        while True:
            conn.sendall(_chunk(b"0.5, " * 13000))
    if mode == "drip":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100000):
            conn.sendall(b" ")
            time.sleep(1.0)
    if mode == "huge":
        n = 20_000_000
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(_chunk(b'{"outputs": [{"name": "probs", "datatype": "FP32", "shape": [%d, 2], "data": [' % (n // 2)))
        block = b"0.5," * 16384
        for _ in range(n // 16384):
            conn.sendall(_chunk(block))
        conn.sendall(_chunk(b"0.5]}]}") + b"0\r\n\r\n")


def handle(conn: socket.socket, mode: str) -> None:
    try:
        while True:
            req = _read_request(conn)
            if req is None:
                return
            method, path = req
            if method == "GET" and path == "/v2":
                _json(conn, {"name": "evil", "extensions": []})
            elif method == "GET" and path == f"/v2/models/{MODEL}":
                _json(conn, META)
            elif method == "GET" and path.endswith("/ready"):
                _json(conn, {})
            elif method == "POST" and path == f"/v2/models/{MODEL}/infer":
                _attack(conn, mode)
                return
            else:
                _json(conn, {"error": "no route"}, "404 Not Found")
    except OSError:  # the client hung up: the attack is over
        pass
    finally:
        conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["lie", "endless", "drip", "huge"], required=True)
    p.add_argument("--ready", required=True)
    a = p.parse_args()
    srv = socket.create_server(("127.0.0.1", 0))
    Path(a.ready).write_text(str(srv.getsockname()[1]))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, a.mode), daemon=True).start()


if __name__ == "__main__":
    main()
