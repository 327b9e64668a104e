"""Real redis-server processes for tests and benchmarks: each on a free loopback port, in its own
folder, started, stopped, killed, paused and restarted on demand. Nothing here mocks Redis."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "free_port", "redis_server_binary"]

READY_TIMEOUT: Final = 20.0


def redis_server_binary() -> str | None:
    """The path of ``redis-server`` (or ``valkey-server``), or ``None`` if neither is
    installed (Debian: ``apt-get install redis-server``)."""
    return shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port below 55536 whose cluster bus port (10000 higher) is free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one inline command and return the first reply bytes (enough for ``+PONG``,
    ``-LOADING``, ``$n...``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        return sock.recv(65536)


@final
class RedisServer:
    """One redis-server on 127.0.0.1:*port* (a free port by default), with its files in *folder*.

    *appendonly*: AOF on, ``appendfsync always`` (every acknowledged write survives a restart or
    a SIGKILL of Redis). *extra*: more ``--option value`` arguments. Use as a context manager, or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def args(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args + self.extra

    def start(self) -> None:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if _command(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}):\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def command(self, *args: str) -> bytes:
        """One inline command (``CONFIG SET ...``, ``FLUSHALL``), its raw reply."""
        return _command(self.port, *args)

    def stop(self) -> None:
        """SIGTERM (Redis flushes its AOF) and wait; SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port and files."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@final
class RedisCluster:
    """A local Redis Cluster of *size* primaries (no replicas), each a :class:`RedisServer`
    in cluster mode, joined with ``redis-cli --cluster create``."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        self.servers = [
            RedisServer(
                folder / f"node{i}",
                port=cluster_port(),
                extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<first node's port>``."""
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    def start(self) -> None:
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(b"cluster_state:ok" in s.command("CLUSTER", "INFO") for s in self.servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@final
class RedisSentinel:
    """One Sentinel (``redis-server --sentinel``) on a free loopback port, in *folder*,
    monitoring *primary* under the service name *service* (quorum 1)."""

    def __init__(self, folder: Path, primary: RedisServer, service: str = "engine") -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self.binary = binary
        self.folder = folder
        self.primary = primary
        self.service = service
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<port>/<service>``."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def start(self) -> None:
        """Start the Sentinel and wait until it names the primary."""
        config = self.folder / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"logfile {self.folder / 'sentinel.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
        )
        self.proc = subprocess.Popen(
            [self.binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                answer = _command(self.port, "SENTINEL", "get-master-addr-by-name", self.service)
                if str(self.primary.port).encode() in answer:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis sentinel exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis sentinel on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RedisSentinel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
