#!/usr/bin/env python3
"""tcpcounter: a line-numbering TCP service, a sample VNF that knows nothing of nfvha.

State (process memory and kernel sockets, so only a checkpoint/restore of the
process keeps it): the listening socket, every established connection with its
ordinal and line count and any half-received line, and the number of connections
accepted and lines answered since start. It exists to show that a listening
socket and an idle established connection survive checkpoint/restore.

Wire protocol, TCP on one port (default 7000), line-based:
    Each line the client sends (ended by b"\\n"; a b"\\r" before it is dropped)
    is answered with b"<conn_no> <line_no> <total_lines> <line>\\n": conn_no is
    the connection's ordinal since start (from 1), line_no the line's number on
    this connection (from 1), total_lines the lines answered on all connections,
    this one included. Lines are arbitrary bytes and are echoed unchanged.
    When the client closes its sending side, a last unterminated line is
    answered like any other, pending replies are sent, then the server closes.
    A line longer than --max-line bytes (b"\r" included) makes the server drop
    that connection without answering it.

SIGTERM and SIGINT end the process with exit status 0.
"""

import argparse
import selectors
import signal
import socket
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

RECV_BYTES = 65536
# Past this many unsent reply bytes, stop reading from a client that does not
# read its replies, so one slow reader cannot make the process grow without bound.
OUTBUF_HIGH = 1 << 20


@dataclass(eq=False)
class Connection:
    """One client connection and what is half-done on it."""

    sock: socket.socket
    conn_no: int
    lines: int = 0
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    # The client has closed its sending side: close once outbuf is drained.
    peer_done: bool = False


class LineCounter:
    """Accepts connections and numbers their lines."""

    def __init__(self, listener: socket.socket, max_line: int) -> None:
        self.listener = listener
        self.max_line = max_line
        self.connections_accepted = 0
        self.total_lines = 0
        # poll rather than epoll: it leaves no kernel object behind for CRIU to dump.
        self._selector = selectors.PollSelector()

    def serve_forever(self) -> NoReturn:
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        try:
            while True:
                for key, events in self._selector.select():
                    if key.data is None:
                        self._accept()
                    else:
                        self._on_connection(key.data, events)
        finally:
            for key in list(self._selector.get_map().values()):
                conn: Connection | None = key.data
                if conn is not None:
                    conn.sock.close()
            self._selector.close()

    def number_lines(self, conn: Connection) -> bool:
        """Answer every complete line in conn.inbuf (and the rest, if the peer is done).

        False if a line is longer than max_line: the connection must then be dropped.
        """
        while True:
            end = conn.inbuf.find(b"\n")
            if end < 0:
                if not (conn.peer_done and conn.inbuf):
                    return len(conn.inbuf) <= self.max_line
                end = len(conn.inbuf)
            if end > self.max_line:
                return False
            line = bytes(conn.inbuf[:end]).removesuffix(b"\r")
            del conn.inbuf[: end + 1]
            conn.lines += 1
            self.total_lines += 1
            conn.outbuf += b"%d %d %d %s\n" % (conn.conn_no, conn.lines, self.total_lines, line)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                # A client that gave up first (ECONNABORTED) or no descriptor left
                # (EMFILE): skip this round and keep serving the connections we have.
                return
            sock.setblocking(False)
            self.connections_accepted += 1
            conn = Connection(sock=sock, conn_no=self.connections_accepted)
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _on_connection(self, conn: Connection, events: int) -> None:
        if events & selectors.EVENT_READ and not self._receive(conn):
            return
        if conn.outbuf and not self._send(conn):
            return
        self._update_interest(conn)

    def _receive(self, conn: Connection) -> bool:
        """Read what is there and number its lines; False if the connection was closed."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            self._close(conn)
            return False
        if not data:
            conn.peer_done = True
        conn.inbuf += data
        if not self.number_lines(conn):
            self._close(conn)
            return False
        return True

    def _send(self, conn: Connection) -> bool:
        """Send what the socket takes now; False if the connection was closed."""
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return True
        except OSError:
            self._close(conn)
            return False
        del conn.outbuf[:sent]
        return True

    def _update_interest(self, conn: Connection) -> None:
        events = 0
        if not conn.peer_done and len(conn.outbuf) < OUTBUF_HIGH:
            events |= selectors.EVENT_READ
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        self._selector.unregister(conn.sock)
        conn.sock.close()


def _listen_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _exit_on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Line-numbering TCP service (sample VNF).")
    parser.add_argument(
        "--host", default="0.0.0.0", help="IPv4 address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=7000, help="listening port (default: %(default)s)"
    )
    parser.add_argument(
        "--max-line",
        type=_positive,
        default=65536,
        help="longest line accepted, in bytes (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    try:
        listener = _listen_tcp(args.host, args.port)
    except OSError as exc:
        print(f"tcpcounter: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    with listener:
        port = listener.getsockname()[1]
        print(f"tcpcounter listening on {args.host}:{port}", flush=True)
        LineCounter(listener, max_line=args.max_line).serve_forever()


if __name__ == "__main__":
    sys.exit(main())
