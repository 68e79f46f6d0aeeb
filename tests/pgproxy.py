"""A counting proxy in front of the test PostgreSQL's Unix socket: how many connections a command opens and how
many bytes the server sends, measured on the wire (no driver is asked)."""
import os
import socket
import threading
from pathlib import Path


class CountingProxy:
    """Listens on `<folder>/.s.PGSQL.5432` and forwards every connection to the server's socket, counting."""

    def __init__(self, folder: Path, upstream: str):
        self.folder, self.upstream = Path(folder), upstream
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / ".s.PGSQL.5432"
        self.connections = 0
        self.bytes_from_server = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self._listener.listen(64)
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            with self._lock:
                self.connections += 1
            for src, dst, counted in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.bytes_from_server += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> tuple[int, int]:
        """The counts so far (connections, bytes from the server), then zero them."""
        with self._lock:
            out = (self.connections, self.bytes_from_server)
            self.connections = self.bytes_from_server = 0
        return out

    def close(self) -> None:
        self._listener.close()
        self.path.unlink(missing_ok=True)
