"""A TCP port that holds a pre-started worker at the door until it is its turn."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading

from stream_ae_dev.devstack import find_free_port


class _ForwardingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class PortGate:
    """A local TCP port that refuses connections until :meth:`open`, then forwards each one
    to ``target_host:target_port``.

    Holds a pre-started worker process at the door: pointed at the gate instead of Redis, it
    imports TensorFlow and warms its model, then retries its Redis connection (and does not
    join the consumer group) until the gate opens. So a replacement can warm up while its
    predecessor still runs, and enter the moment that one is killed.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = find_free_port()
        self._server: _ForwardingServer | None = None
        self._sockets: list[socket.socket] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def open(self) -> None:
        gate = self

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(gate.target)
                client: socket.socket = self.request
                gate._sockets += [client, upstream]
                peers = {client: upstream, upstream: client}
                try:
                    while True:
                        readable, _, _ = select.select(list(peers), [], [], 1.0)
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            peers[sock].sendall(data)
                except OSError:
                    return
                finally:
                    upstream.close()

        server = _ForwardingServer(("127.0.0.1", self.port), Forward)
        threading.Thread(target=server.serve_forever, name="port-gate", daemon=True).start()
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
