#!/usr/bin/env python3
"""A VNF for benchmarks/tcp_lock.py: TCP echo on port 7000 and UDP echo on port 7001.

One process, a thread per TCP connection: the smallest VNF that holds both established
TCP connections and a UDP service, so that one run shows what the TCP network lock of a
checkpoint costs each kind of client.
"""

from __future__ import annotations

import socket
import threading

TCP_PORT, UDP_PORT = 7000, 7001


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _udp() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", UDP_PORT))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def main() -> None:
    threading.Thread(target=_udp, daemon=True).start()
    srv = socket.create_server(("0.0.0.0", TCP_PORT), backlog=64)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
