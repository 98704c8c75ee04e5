"""A TCP forwarder for the tests that lose a server mid-test: clients connect to the proxy's
port, the proxy connects them to the real server. ``close`` drops the listener and every open
connection (the server is gone, as far as the clients can tell); ``open`` listens on the same
port again (the server is back). ``freeze`` keeps every connection open and accepts new ones
but forwards nothing either way (a server that is stopped or hung: it never answers, and no
timeout of the kernel's sees anything wrong); ``thaw`` lets what was held through."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

CHUNK = 64 * 1024
ACCEPT_POLL_S = 0.1  # how often the accept loop looks at the stop flag


class TcpProxy:
    """127.0.0.1:<port> -> ``target_uri``'s host and port (``http://host:port``)."""

    def __init__(self, target_uri: str) -> None:
        parts = urlsplit(target_uri)
        self.target = (parts.hostname or "127.0.0.1", int(parts.port or 80))
        self.port = 0  # chosen by the first open, kept after
        self.listener: socket.socket | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []
        self.flowing = threading.Event()  # cleared while frozen
        self.flowing.set()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_S)
        self.port, self.listener = listener.getsockname()[1], listener
        self.stop.clear()
        self._start(self._accept_loop, listener)
        return self

    def freeze(self) -> None:
        """Accept, never answer: nothing is forwarded until ``thaw``."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _wait_flowing(self) -> bool:
        """Wait while frozen; False when the proxy closes meanwhile."""
        while not self.flowing.wait(ACCEPT_POLL_S):
            if self.stop.is_set():
                return False
        return True

    def close(self) -> None:
        """Stop listening (connects are refused) and cut every forwarded connection."""
        self.stop.set()
        for thread in self.threads:
            if thread.name == "proxy-accept":
                thread.join(timeout=5)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for conn in conns:
            _shut(conn)
        for thread in self.threads:
            thread.join(timeout=5)
        self.threads = []

    def _start(self, target, *args) -> None:
        name = "proxy-accept" if target == self._accept_loop else "proxy-pipe"
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.flowing.is_set():
                self._bridge(client)
            else:  # frozen: the client is connected and waits for an answer
                with self.lock:
                    self.conns.add(client)
                self._start(self._bridge, client)

    def _bridge(self, client: socket.socket) -> None:
        if not self._wait_flowing():
            _shut(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _shut(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        with self.lock:
            self.conns |= {client, upstream}
        self._start(self._pipe, client, upstream)
        self._start(self._pipe, upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                if not self._wait_flowing():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src)
            _shut(dst)
            with self.lock:
                self.conns -= {src, dst}


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
