"""The agent's entry point: configuration, lookup, the command API, heartbeats, until SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from ironworks.agent import AGENT_VERSION, Runner, run_command
from ironworks.agent.client import AgentApiError, ApiClient, Heartbeater, LookupFailed
from ironworks.agent.commands import default_extensions
from ironworks.agent.config import AgentConfig, AgentConfigError, load_config
from ironworks.agent.hardware import HardwareContext, load_managers
from ironworks.agent.inventory import mac_addresses
from ironworks.agent.server import AgentServer, CommandExecutor

LOG = logging.getLogger("ironworks.agent")


def route_address(api_url: str) -> str:
    """The local address the kernel would use to reach the API (what the conductor can call back)."""
    parts = urlsplit(api_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))  # UDP: no packet is sent, the kernel only picks a route
        return str(s.getsockname()[0])


def callback_url(cfg: AgentConfig) -> str:
    """``http://<advertise host>:<advertise port>``."""
    host = cfg.advertise_host or route_address(cfg.api_url)
    return f"http://[{host}]:{cfg.advertise_port}" if ":" in host else f"http://{host}:{cfg.advertise_port}"


def run(cfg: AgentConfig, *, stop: threading.Event, runner: Runner = run_command) -> int:
    """Look up, serve and heartbeat until ``stop`` is set; returns the exit status."""
    ctx = HardwareContext(root=cfg.root, runner=runner, allowed_devices=cfg.allowed_devices, ramdisk=cfg.ramdisk)
    if not cfg.ramdisk:
        LOG.warning("not in a ramdisk: only these devices may be touched: %s", ", ".join(cfg.device_allowlist or ()))
    managers = load_managers(ctx)
    macs = mac_addresses(cfg.root, runner)

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise LookupFailed("stopped before the node was found")

    client = ApiClient(cfg.api_url, insecure=cfg.insecure, sleep=sleep)
    LOG.info("looking up the node at %s with MAC addresses %s", cfg.api_url, ", ".join(macs) or "-")
    try:
        found = client.lookup(
            macs,
            timeout=cfg.lookup_timeout,
            pregenerated_token=cfg.agent_token,
            heartbeat_timeout=cfg.heartbeat_timeout,
        )
    except AgentApiError as exc:
        LOG.error("%s", exc)
        return 1
    ctx.node = found.node
    url = callback_url(cfg)
    beats = Heartbeater(
        client,
        node_uuid=found.node_uuid,
        callback_url=url,
        token=found.agent_token,
        heartbeat_timeout=found.heartbeat_timeout,
        agent_version=AGENT_VERSION,
    )
    executor = CommandExecutor(
        default_extensions(managers, ctx, on_rescue=lambda: beats.stop(join=False)),
        on_finished=lambda _result: beats.force(),
    )
    ctx.progress = executor.report_progress
    try:
        server = AgentServer(executor, token=found.agent_token, host=cfg.listen_host, port=cfg.listen_port)
    except OSError as exc:
        LOG.error("cannot listen on %s:%d: %s", cfg.listen_host, cfg.listen_port, exc)
        return 1
    server.start()
    LOG.info("node %s: agent API on %s:%d, callback %s", found.node_uuid, cfg.listen_host, server.port, url)
    beats.start()
    stop.wait()
    LOG.info("stopping")
    beats.stop()
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``ironworks agent`` / ``python -m ironworks.agent``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
    except AgentConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return run(cfg, stop=stop)
