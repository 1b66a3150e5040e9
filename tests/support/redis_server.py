"""Real redis-server processes for tests: start, kill -9, restart, slow down, cluster, sentinel.

Also the small helpers the store tests share (polling, log capture).

Every process is started on a free port of 127.0.0.1, without persistence,
and killed by whoever started it: use :func:`running` in a fixture. When the
``CI`` environment variable is set, a missing ``redis-server`` fails the test
instead of skipping it.
"""

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from loguru import logger

START_TIMEOUT = 10.0


def require_redis_binaries(*names: str):
    """Skip (locally) or fail (on CI) unless every named binary is on PATH."""
    missing = [n for n in names or ("redis-server", "redis-cli") if shutil.which(n) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not found on PATH; install Redis >= 7 to run these tests"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port(*, with_bus: bool = False) -> int:
    """A TCP port free on 127.0.0.1 (and, for cluster nodes, port + 10000 too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(predicate, timeout: float = START_TIMEOUT, interval: float = 0.02, what: str = ""):
    """Poll ``predicate`` until it is truthy; raise AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes | None:
    """Send one command over a raw socket; the raw reply, or None if unreachable."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(payload)
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            # Bulk replies: read the announced length.
            if reply.startswith(b"$") and not reply.startswith(b"$-1"):
                size = int(reply.split(b"\r\n", 1)[0][1:])
                while len(reply.split(b"\r\n", 1)[1]) < size + 2:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            return reply
    except OSError:
        return None


class RedisServer:
    """One redis-server process on a fixed port, restartable on the same port.

    Args:
        workdir: Directory for its files (cluster config, logs).
        port: Port to listen on; a free one by default.
        extra_args: More ``redis-server`` arguments.
    """

    def __init__(self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.workdir / f"redis-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--enable-debug-command",
                    "local",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.ping, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        """Whether the server answers PING."""
        if self.process is None or self.process.poll() is not None:
            return False
        return _command(self.port, "PING", timeout=0.5) == b"+PONG\r\n"

    def command(self, *args: str) -> bytes | None:
        """Run one command on a fresh connection; the raw RESP reply."""
        return _command(self.port, *args)

    def kill(self):
        """kill -9 the server (no shutdown, no goodbye to clients) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def restart(self) -> "RedisServer":
        """Kill the server if running and start a new, empty one on the same port."""
        self.kill()
        return self.start()

    def sleep(self, seconds: float) -> subprocess.Popen:
        """Run ``DEBUG SLEEP seconds`` from another client, without waiting for it.

        Returns:
            The ``redis-cli`` process; wait on it to know the server is awake.
        """
        process = subprocess.Popen(
            ["redis-cli", "-p", str(self.port), "DEBUG", "SLEEP", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The server is asleep once it stops answering.
        wait_until(
            lambda: _command(self.port, "PING", timeout=0.05) is None,
            timeout=2.0,
            interval=0.005,
            what="DEBUG SLEEP to take effect",
        )
        return process

    def stop(self):
        """Kill the server; safe to call twice."""
        self.kill()
        self.process = None


class RedisCluster:
    """A Redis Cluster of three masters and no replicas.

    Args:
        workdir: Directory for the nodes' files.
    """

    def __init__(self, workdir: Path):
        self.nodes = [
            RedisServer(
                Path(workdir) / f"node{i}",
                port=port,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(Path(workdir) / f"node{i}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ),
            )
            for i, port in enumerate(_distinct_ports(3, with_bus=True))
        ]

    @property
    def url(self) -> str:
        """The URL of the first node (any node works for RedisCluster)."""
        return self.nodes[0].url

    def start(self) -> "RedisCluster":
        """Start the nodes, join them with ``redis-cli --cluster create``, wait for state ok."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        for node in self.nodes:
            wait_until(
                lambda node=node: b"cluster_state:ok" in (node.command("CLUSTER", "INFO") or b""),
                what=f"cluster state ok on {node.port}",
            )
        return self

    def stop(self):
        """Kill every node."""
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, optional replicas, and one Sentinel watching them as ``service_name``.

    Args:
        workdir: Directory for the files.
        service_name: The name Sentinel knows the master by.
        replicas: How many replicas of the master to start.
    """

    def __init__(self, workdir: Path, service_name: str = "tts-master", replicas: int = 0):
        self.workdir = Path(workdir)
        self.service_name = service_name
        self.master = RedisServer(self.workdir / "master")
        self.replicas = [
            RedisServer(
                self.workdir / f"replica{i}",
                extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
            )
            for i in range(replicas)
        ]
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` of the sentinel."""
        return [("127.0.0.1", self.port)]

    def master_port(self) -> int | None:
        """The port Sentinel currently names as the master's."""
        reply = _command(self.port, "SENTINEL", "get-master-addr-by-name", self.service_name)
        parts = (reply or b"").split(b"\r\n")
        return int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else None

    def start(self) -> "RedisSentinel":
        """Start the servers, then the sentinel; wait until it knows the master and replicas."""
        self.master.start()
        for replica in self.replicas:
            replica.start()
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.service_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service_name} 500\n"
            f"sentinel failover-timeout {self.service_name} 5000\n"
        )
        with open(self.workdir / "sentinel.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: self.master_port() == self.master.port, what="sentinel to know the master"
        )
        for replica in self.replicas:
            wait_until(
                lambda replica=replica: (
                    str(replica.port).encode()
                    in (_command(self.port, "SENTINEL", "replicas", self.service_name) or b"")
                ),
                what=f"sentinel to know replica {replica.port}",
            )
        return self

    def stop(self):
        """Kill the sentinel and every server."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)
        for server in (self.master, *self.replicas):
            server.stop()


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with ``openssl``.

    Returns:
        Paths keyed ``ca``, ``cert`` and ``key``.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found on PATH")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            d / "ca.key",
            "-out",
            files["ca"],
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            files["key"],
            "-out",
            d / "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            d / "server.csr",
            "-CA",
            files["ca"],
            "-CAkey",
            d / "ca.key",
            "-CAcreateserial",
            "-out",
            files["cert"],
            "-days",
            "1",
            "-extfile",
            d / "ext.cnf",
        ],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    return files


def _distinct_ports(count: int, *, with_bus: bool) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(with_bus=with_bus)
        if all(port not in (p, p + 10000, p - 10000) for p in ports):
            ports.append(port)
    return ports


@contextmanager
def running(server) -> Iterator:
    """Start a RedisServer/RedisCluster/RedisSentinel and always stop it."""
    require_redis_binaries()
    try:
        yield server.start()
    finally:
        server.stop()


# -- helpers for the store tests -------------------------------------------


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.005, what: str = ""):
    """Await ``predicate()`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@contextmanager
def captured_logs(level: str = "DEBUG", name: str = "pipecat_tts_failover.store") -> Iterator[list]:
    """Collect loguru records from ``name`` and below while the block runs."""
    records: list = []
    sink = logger.add(lambda m: records.append(m.record), level=level, filter=name)
    try:
        yield records
    finally:
        logger.remove(sink)
