"""A private Redis Cluster from local redis-server processes, for tests, benchmarks and docs.

Every node is a ``RedisServer`` (free port, own directory) with ``--cluster-enabled yes``;
nodes are stopped by PID, never by name.

    python -m integrations.cluster start --dir DIR [--masters 3 --replicas 1]
    python -m integrations.cluster stop --dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from .servers import CI, RedisServer, free_port

SLOTS = 16384


def _is_node(pid: int, port: int) -> bool:
    """Whether PID is a redis-server on PORT (it retitles itself ``... 127.0.0.1:PORT``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            tokens = file.read().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return False
    return any("redis-server" in token for token in tokens) and any(
        token == str(port) or token.endswith(f":{port}") for token in tokens
    )


def _kill_pid(pid: int, port: int) -> bool:
    """SIGKILL PID if it is the redis-server on PORT, and wait until it is gone."""
    if not _is_node(pid, port):
        return False
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _is_node(pid, port) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def _covers(tokens: Sequence[str], slot: int) -> bool:
    """Whether the slot fields of a CLUSTER NODES line hold SLOT ('[...]' are migrations)."""
    for token in tokens:
        if not token.startswith("["):
            low, _, high = token.partition("-")
            if int(low) <= slot <= int(high or low):
                return True
    return False


def _role(line: Sequence[str]) -> tuple[str, str]:
    return ("master", "-") if "master" in line[2] else ("replica of", line[3])


class LocalCluster:
    """``masters`` + ``masters * replicas`` redis-server processes with
    ``--cluster-enabled yes`` on free ports, formed with
    ``redis-cli --cluster create ... --cluster-replicas N --cluster-yes``.

    Roles are read from the nodes at each call: they change after a failover. ``detach``
    daemonizes the nodes (own session: they outlive this process), for the CLI.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000,
                 appendonly: bool = False, args: Sequence[str] = (),
                 detach: bool = False) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.cli = shutil.which("redis-cli") or ""
        if not self.cli:
            if CI:
                pytest.fail("redis-cli is not installed; CI=true makes a missing service a failure")
            pytest.skip("redis-cli is not installed")
        self.replicas_per_master = replicas
        self.detach = detach
        self._options = (node_timeout_ms, appendonly, list(args))
        self.nodes = [self._new_node() for _ in range(masters * (1 + replicas))]
        self.directory = tempfile.mkdtemp(prefix="kw-cluster-")
        self.pids: dict[int, int] = {}
        self.reshard_log: str | None = None
        self._ids: dict[int, str] = {}

    def start(self) -> LocalCluster:
        try:
            for index in range(len(self.nodes)):
                for attempt in range(3):  # another process can take a free port first
                    try:
                        self.nodes[index].start()
                        break
                    except RuntimeError:
                        self._discard(self.nodes[index])
                        if attempt == 2:
                            raise
                        self.nodes[index] = self._new_node()
                node = self.nodes[index]
                if self.detach and node.process is not None:
                    node.process.wait(10)  # the daemonizing parent exits at once
                self.pids[node.port] = int(self._call(node, "INFO", "server")["process_id"])
            result = subprocess.run(
                [self.cli, "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).decode(errors="replace")
                raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")
            for node in self.nodes:
                self.node_id(node)
            self._wait(30, self._ready_problem, "the cluster did not become ready")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return self.masters()[0].url

    def client(self, **options: Any) -> RedisCluster:
        nodes = [ClusterNode(n.host, n.port) for n in self._live()]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **options)

    def node_client(self, node: RedisServer) -> redis.Redis:
        return node.client()

    def masters(self) -> list[RedisServer]:
        return [node for node in self._live() if "master" in self._myself(node)[2]]

    def replicas(self) -> list[RedisServer]:
        return [node for node in self._live() if "slave" in self._myself(node)[2]]

    def slots_of(self, master: RedisServer) -> set[int]:
        """The slots MASTER claims in its own view."""
        tokens = self._myself(master)[8:]
        return {slot for slot in range(SLOTS) if _covers(tokens, slot)}

    def master_of_slot(self, slot: int) -> RedisServer:
        """The live master claiming SLOT, else its owner in a live node's view (a killed
        master keeps its slots until a failover)."""
        for node in self.masters():
            if _covers(self._myself(node)[8:], slot):
                return node
        for line in self._view(self._live()[0]):
            if "master" in line[2] and _covers(line[8:], slot):
                return next(n for n in self.nodes if self._ids.get(n.port) == line[0])
        raise RuntimeError(f"no node owns slot {slot}")

    def master_of_key(self, key: str) -> RedisServer:
        return self.master_of_slot(key_slot(key.encode()))

    def replica_of(self, master: RedisServer) -> RedisServer:
        master_id = self.node_id(master)
        for node in self.replicas():
            if self._myself(node)[3] == master_id:
                return node
        raise RuntimeError(f"master {master.port} has no live replica")

    def node_id(self, node: RedisServer) -> str:
        if node.port not in self._ids:
            self._ids[node.port] = str(self._call(node, "CLUSTER", "MYID"))
        return self._ids[node.port]

    def failover(self, master: RedisServer, *, force: bool = False,
                 timeout: float = 30) -> RedisServer:
        """CLUSTER FAILOVER [FORCE] on MASTER's replica; return that replica once every live
        node sees it as a master and the cluster is ready again."""
        replica = self.replica_of(master)
        replica_id = self.node_id(replica)
        sent = 0.0

        def problem() -> str | None:
            nonlocal sent
            if "slave" in self._myself(replica)[2] and time.monotonic() - sent > 6:
                # Again if an earlier request timed out (after 5 s, with no error).
                self._call(replica, "CLUSTER", "FAILOVER", *(["FORCE"] if force else []))
                sent = time.monotonic()
            for node in self._live():
                for line in self._view(node):
                    if line[0] == replica_id and "master" not in line[2]:
                        return f"node {node.port} sees {replica.port} as {line[2]}"
            return self._ready_problem()

        self._wait(timeout, problem, f"failover of {master.port} to {replica.port} failed")
        return replica

    def reshard(self, source: RedisServer, target: RedisServer, slots: int, *,
                wait: bool = True) -> subprocess.Popen[bytes]:
        """``redis-cli --cluster reshard`` of SLOTS slots from SOURCE to TARGET, once
        wait_stable (redis-cli refuses nodes that disagree). Output goes to ``reshard_log``;
        with WAIT a failure raises with it, and success waits for stability again."""
        self.wait_stable()
        self.reshard_log = os.path.join(self.directory, f"reshard-{time.monotonic_ns()}.log")
        with open(self.reshard_log, "wb") as log:
            process = subprocess.Popen(
                [self.cli, "--cluster", "reshard", f"{source.host}:{source.port}",
                 "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
                 "--cluster-slots", str(slots), "--cluster-yes"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait:
            process.wait(300)
            with open(self.reshard_log, errors="replace") as log:
                output = log.read()
            if process.returncode != 0 or "[ERR]" in output:
                raise RuntimeError(f"redis-cli --cluster reshard failed:\n{output[-4000:]}")
            self.wait_stable()
        return process

    def wait_stable(self, timeout: float = 30) -> None:
        """Wait until every live node reports the same slot -> master map (CLUSTER SLOTS)
        and none has a slot migrating or importing."""

        def problem() -> str | None:
            maps: dict[int, str] = {}
            for node in self._live():
                for line in self._view(node):
                    if any(token.startswith("[") for token in line[8:]):
                        return f"node {node.port} sees open slots {line[8:]}"
                ranges = self._call(node, "CLUSTER", "SLOTS")
                maps[node.port] = repr(sorted((r[0], r[1], r[2][1]) for r in ranges))
            agreed = len(set(maps.values())) <= 1
            return None if agreed else f"nodes disagree on the slot map: {maps}"

        self._wait(timeout, problem, "the cluster did not settle")

    def kill(self, node: RedisServer) -> None:
        """SIGKILL NODE: no shutdown, no final save."""
        pid = self.pids.get(node.port)
        if node.process is not None and pid in (None, node.process.pid):
            node.kill()
        elif pid is not None:
            _kill_pid(pid, node.port)

    def restart(self, node: RedisServer, timeout: float = 30) -> None:
        """Start a killed NODE again on its port and data directory (its nodes.conf
        makes it rejoin, as a replica if its shard failed over meanwhile); wait until
        the cluster is ready again."""
        node.start()
        self.pids[node.port] = int(self._call(node, "INFO", "server")["process_id"])
        self._wait(timeout, self._ready_problem, f"node {node.port} did not rejoin")

    def stop(self) -> None:
        for node in self.nodes:
            self._discard(node)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _new_node(self) -> RedisServer:
        node_timeout_ms, appendonly, args = self._options
        daemon = ["--daemonize", "yes", "--pidfile", "redis.pid", "--logfile", "redis.log"]
        return RedisServer(appendonly=appendonly, args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # The default bus port is port + 10000: past 65535 for a high free port.
            "--cluster-port", str(free_port()),
            # Else a master waits 5 s for more replicas before a replica's first sync.
            "--repl-diskless-sync-delay", "0",
            *(daemon if self.detach else []), *args,
        ])

    def _discard(self, node: RedisServer) -> None:
        self.kill(node)
        if self.detach and node.port not in self.pids:  # a daemon that did not answer
            try:
                with open(os.path.join(node.directory, "redis.pid")) as file:
                    _kill_pid(int(file.read()), node.port)
            except (OSError, ValueError):
                pass
        node.stop()

    def _alive(self, node: RedisServer) -> bool:
        pid = self.pids.get(node.port)
        if node.process is not None and pid in (None, node.process.pid):
            return node.process.poll() is None
        return pid is not None and _is_node(pid, node.port)

    def _live(self) -> list[RedisServer]:
        return [node for node in self.nodes if self._alive(node)]

    def _call(self, node: RedisServer, *args: Any) -> Any:
        # ("CLUSTER", "NODES") as two words skips redis-py's parsing: the text comes back.
        with node.client(decode_responses=True, socket_timeout=5) as client:
            return client.execute_command(*args)

    def _view(self, node: RedisServer) -> list[list[str]]:
        text = str(self._call(node, "CLUSTER", "NODES"))
        return [line.split() for line in text.splitlines() if line.strip()]

    def _myself(self, node: RedisServer) -> list[str]:
        return next(line for line in self._view(node) if "myself" in line[2])

    def _ready_problem(self) -> str | None:
        # A master learns of its replica by gossip, well after redis-cli --cluster create
        # returns; a CLUSTER FAILOVER before then is ignored and times out after 5 s.
        views = {node.port: self._view(node) for node in self._live()}
        own = {line[0]: _role(line) for view in views.values() for line in view
               if "myself" in line[2]}
        for port, view in views.items():
            for line in view:
                if line[0] in own and _role(line) != own[line[0]]:
                    return f"node {port} sees {line[1]} as {_role(line)}, not {own[line[0]]}"
        for node in self._live():
            text = str(self._call(node, "CLUSTER", "INFO"))
            info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if info["cluster_state"] != "ok":
                return f"node {node.port}: cluster_state:{info['cluster_state']}"
            if int(info["cluster_slots_assigned"]) != SLOTS:
                return f"node {node.port}: {info['cluster_slots_assigned']} slots assigned"
            if int(info["cluster_known_nodes"]) < len(self.nodes):
                return f"node {node.port}: knows {info['cluster_known_nodes']} nodes"
            replication = self._call(node, "INFO", "replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return f"replica {node.port}: master_link_status:down"
        return None

    def _wait(self, timeout: float, problem: Callable[[], str | None], what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                missing = problem()
            except redis.RedisError as exc:
                missing = repr(exc)
            if missing is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {timeout:g} s: {missing}")
            time.sleep(0.05)


@contextmanager
def redis_cluster(masters: int = 3, replicas: int = 1, **options: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(masters, replicas, **options)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrations.cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a detached cluster; print its URL")
    start.add_argument("--masters", type=int, default=3)
    start.add_argument("--replicas", type=int, default=1)
    start.add_argument("--node-timeout-ms", type=int, default=2000)
    stop = commands.add_parser("stop", help="kill the nodes DIR/cluster.json names")
    for command in (start, stop):
        command.add_argument("--dir", required=True)
    options = parser.parse_args(argv)
    state = os.path.join(options.dir, "cluster.json")

    if options.command == "start":
        missing = [name for name in ("redis-server", "redis-cli") if not shutil.which(name)]
        if missing or os.path.exists(state):
            print(f"not installed: {missing}" if missing else f"{state} exists: stop it first",
                  file=sys.stderr)
            return 1
        os.makedirs(options.dir, exist_ok=True)
        cluster = LocalCluster(options.masters, options.replicas, detach=True,
                               node_timeout_ms=options.node_timeout_ms).start()
        masters = {node.port for node in cluster.masters()}
        nodes = [{"port": node.port, "pid": cluster.pids[node.port], "directory": node.directory,
                  "role": "master" if node.port in masters else "replica"}
                 for node in cluster.nodes]
        with open(state, "w") as file:
            json.dump({"url": cluster.url, "directory": cluster.directory, "nodes": nodes},
                      file, indent=2)
        print(cluster.url)
        return 0

    if not os.path.exists(state):
        print(f"{state} does not exist", file=sys.stderr)
        return 1
    with open(state) as file:
        record = json.load(file)
    for node in record["nodes"]:
        if not _kill_pid(int(node["pid"]), int(node["port"])):
            print(f"pid {node['pid']} is no redis-server on port {node['port']}: left alone")
    for directory in [record["directory"], *(node["directory"] for node in record["nodes"])]:
        if os.path.basename(directory).startswith(("kw-redis-", "kw-cluster-")):
            shutil.rmtree(directory, ignore_errors=True)
    os.remove(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
