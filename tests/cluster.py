"""A three-node JetStream cluster of the tests' own (and the benchmarks')."""

from __future__ import annotations

from pathlib import Path

from berth.local import LocalNats, free_port
from broker.connection import connect

__all__ = ["Cluster", "js_ready"]


class Cluster:
    """Three nats-servers on ``host`` (127.0.0.1, or an address the tests' network
    namespaces reach), routed to each other, JetStream clustered."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.host = host
        self.ports = {n: free_port() for n in "abc"}
        self.routes = {n: free_port() for n in "abc"}
        self.nodes: dict[str, LocalNats] = {}
        for n in "abc":
            peers = ", ".join(f'"nats://{host}:{self.routes[p]}"' for p in "abc" if p != n)
            config = (
                f'cluster {{ name: berth-test, listen: "{host}:{self.routes[n]}", '
                f"routes: [{peers}] }}"
            )
            self.nodes[n] = LocalNats(
                root / n, port=self.ports[n], config=config, name=f"n-{n}", host=host
            )

    def start(self, *which: str) -> None:
        for n in which or "abc":
            self.nodes[n].start()

    @property
    def url(self) -> str:
        """Every node, as an operator names a cluster (one would do: clients learn of the
        others from it)."""
        return ",".join(f"nats://{self.host}:{self.ports[n]}" for n in "abc")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


async def js_ready(url: str) -> bool:
    try:
        b = await connect(url, "test-probe", timeout=2)
    except Exception:
        return False
    try:
        await b.js.account_info()
        return True
    except Exception:
        return False
    finally:
        await b.close()
