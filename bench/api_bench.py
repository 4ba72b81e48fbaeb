#!/usr/bin/env python3
"""Benchmark of the Bare Metal API v1: enrolment rate, time to provision, list latency, memory.

It makes only public Ironic API calls, so it measures Ironworks (started here, a fresh server per run)
or any Ironic at ``--url``. It reports and never judges: the exit status is non-zero only when
something breaks (a node lands in a failed state, a phase overruns, the server does not start).
What each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx

try:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson only makes parsing faster
    loads = json.loads

from report import FIGURES, RunResult, fmt, render_table, summarize
from server_process import ExternalServer, IronworksServer, ServerError, rss_mib

#: States a node never leaves by itself: reaching one ends the benchmark with an error.
FAILED_STATES = frozenset(
    {
        "error",
        "deploy failed",
        "clean failed",
        "inspect failed",
        "rescue failed",
        "unrescue failed",
        "service failed",
        "adopt failed",
    }
)
POLL_INTERVAL = 0.05
#: (verb sent to /states/provision, state every node must reach, state a node falls back to on failure)
PHASES = (
    ("manage", "manageable", "enroll"),
    ("provide", "available", "manageable"),
    ("active", "active", "available"),
)


class BenchError(Exception):
    """The benchmark cannot go on: a request failed, a node failed, or a step overran its time."""


# ---- HTTP ------------------------------------------------------------------------------------------
def make_client(url: str, args: argparse.Namespace) -> httpx.AsyncClient:
    """HTTP/1.1 with keep-alive, one connection per concurrent worker, no proxy from the environment."""
    auth = tuple(args.basic_auth.split(":", 1)) if args.basic_auth else None
    return httpx.AsyncClient(
        base_url=url,
        headers={"X-OpenStack-Ironic-API-Version": args.api_version, "Accept": "application/json"},
        http1=True,
        http2=False,
        limits=httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency),
        timeout=httpx.Timeout(args.request_timeout),
        auth=auth,
        trust_env=False,
    )


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    ok: Iterable[int] = (200,),
    retry_until: float | None = None,
    retries: Counter[str] | None = None,
) -> httpx.Response:
    """One request; "node locked" (409) and 503 retried until ``retry_until``; other statuses raise."""
    while True:
        try:
            resp = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BenchError(f"{method} {path} failed: {exc!r}") from exc
        if resp.status_code in ok:
            return resp
        busy = resp.status_code == 503 or (resp.status_code == 409 and "locked" in resp.text.lower())
        if busy and retry_until is not None and time.monotonic() < retry_until:
            if retries is not None:
                retries[f"{method} {resp.status_code}"] += 1
            await asyncio.sleep(0.1)
            continue
        raise BenchError(f"{method} {path} answered {resp.status_code}: {resp.text[:500]}")


def same_origin(link: str) -> str:
    """A ``next`` link reduced to path and query, so that it is followed on the server we talk to."""
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def list_nodes(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every node of a listing, following ``next`` links."""
    nodes: list[dict[str, Any]] = []
    next_path: str | None = path
    while next_path:
        data = loads((await call(client, "GET", next_path)).content)
        nodes.extend(data["nodes"])
        next_path = same_origin(data["next"]) if data.get("next") and data["nodes"] else None
    return nodes


async def in_parallel(items: Iterable[Any], worker: Callable[[Any], Awaitable[None]], concurrency: int) -> None:
    """``worker(item)`` for every item, ``concurrency`` at a time; the first error cancels the rest."""
    it = iter(items)

    async def lane() -> None:
        for item in it:  # one shared iterator: each item goes to exactly one lane
            await worker(item)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(lane())


@asynccontextmanager
async def step(name: str, seconds: float) -> AsyncIterator[None]:
    """Bound a step in time: ``BenchError`` naming the step when it overruns."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BenchError(f"step {name!r} took more than {seconds:g} s") from None


# ---- measurements ----------------------------------------------------------------------------------
def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (with 30 samples, p99 is the slowest)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def create_nodes(
    client: httpx.AsyncClient, names: list[str], args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> list[str]:
    """Enroll one fake-hardware node per name, ``--concurrency`` at a time; their UUIDs in order."""
    uuids: dict[str, str] = {}

    async def create(name: str) -> None:
        body = {
            "driver": args.driver,
            "name": name,
            "driver_info": {"bmc_username": "bench", "bmc_password": "not-a-real-password"},
            **(extra or {}),
        }
        resp = await call(client, "POST", "/v1/nodes", body=body, ok=(201,))
        uuids[name] = loads(resp.content)["uuid"]

    await in_parallel(names, create, args.concurrency)
    return [uuids[n] for n in names]


async def measure_list(
    client: httpx.AsyncClient, path: str, args: argparse.Namespace, expected: int, result: RunResult, key: str
) -> None:
    """Sequential GETs of ``path``: p50/p99 of the samples after the warm-ups, and the page's node count."""
    times_ms: list[float] = []
    last = b""
    for i in range(args.warmups + args.samples):
        t0 = time.perf_counter()
        resp = await call(client, "GET", path)  # the body is read before this returns
        elapsed = (time.perf_counter() - t0) * 1000
        if i >= args.warmups:
            times_ms.append(elapsed)
        last = resp.content
    data = loads(last)
    count = len(data["nodes"])
    result.figures[f"{key}_p50_ms"] = percentile(times_ms, 50)
    result.figures[f"{key}_p99_ms"] = percentile(times_ms, 99)
    result.raw[f"{key}_samples_ms"] = times_ms
    result.raw[f"{key}_nodes"] = count
    result.raw[f"{key}_bytes"] = len(last)
    result.raw[f"{key}_has_next"] = "next" in data
    if count < expected:
        how = "with a next link (the server's page is smaller)" if "next" in data else "and no next link"
        result.notes.append(f"GET {path} returned {count} of {expected} nodes {how}")


async def wait_for_state(
    client: httpx.AsyncClient, poll_path: str, uuids: set[str], target: str, fallback: str, deadline: float
) -> int:
    """Poll every 50 ms until every node is in ``target``; the number of polls. ``BenchError`` on a failure."""
    polls = 0
    checked_at: dict[str, float] = {}
    while True:
        polls += 1
        seen = {n["uuid"]: n["provision_state"] for n in await list_nodes(client, poll_path)}
        mine = {u: seen.get(u) for u in uuids}
        failed = [u for u, s in mine.items() if s in FAILED_STATES or (s or "").endswith(" failed")]
        # a node back in the phase's start state failed only if it says so (Ironic: verify failure -> enroll)
        now = time.monotonic()
        for u in [u for u, s in mine.items() if s == fallback and now - checked_at.get(u, 0) > 1.0][:8]:
            checked_at[u] = now
            if (await node_detail(client, u)).get("last_error"):
                failed.append(u)
        if failed:
            lines = []
            for u in failed[:10]:
                n = await node_detail(client, u)
                lines.append(f"  {u} ({n.get('name')}): {n.get('provision_state')}: {n.get('last_error')}")
            raise BenchError(f"{len(failed)} node(s) failed on the way to {target}:\n" + "\n".join(lines))
        if all(s == target for s in mine.values()):
            return polls
        if now > deadline:
            states = Counter(str(s) for s in mine.values())
            raise BenchError(f"not every node reached {target} in time; states: {dict(states)}")
        await asyncio.sleep(POLL_INTERVAL)


async def node_detail(client: httpx.AsyncClient, uuid: str) -> dict[str, Any]:
    """A node's name, provision state and last error."""
    resp = await call(client, "GET", f"/v1/nodes/{uuid}?fields=uuid,name,provision_state,last_error")
    data: dict[str, Any] = loads(resp.content)
    return data


async def provision(
    client: httpx.AsyncClient,
    uuids: list[str],
    resource_class: str,
    args: argparse.Namespace,
    result: RunResult,
) -> None:
    """(b): manage, provide, active, each sent to every node then polled until all nodes are there."""
    poll_path = f"/v1/nodes?fields=uuid,provision_state&limit=1000&resource_class={resource_class}"
    start = time.monotonic()
    for verb, target, fallback in PHASES:
        phase_start = time.monotonic()
        deadline = phase_start + args.phase_timeout

        async def send(uuid: str, verb: str = verb, deadline: float = deadline) -> None:
            await call(
                client,
                "PUT",
                f"/v1/nodes/{uuid}/states/provision",
                body={"target": verb},
                ok=(202,),
                retry_until=deadline,
                retries=result.retries,
            )

        try:
            async with asyncio.timeout(args.phase_timeout):
                await in_parallel(uuids, send, args.concurrency)
                polls = await wait_for_state(client, poll_path, set(uuids), target, fallback, deadline)
        except TimeoutError:
            raise BenchError(f"phase {verb!r} took more than {args.phase_timeout:g} s") from None
        result.figures[f"{verb}_s"] = time.monotonic() - phase_start
        result.raw[f"{verb}_polls"] = polls
    result.figures["deploy_s"] = time.monotonic() - start


async def delete_nodes(
    client: httpx.AsyncClient, uuids: list[str], args: argparse.Namespace, result: RunResult
) -> None:
    """Remove the nodes this run created (maintenance first: Ironic refuses to delete an active node)."""
    deadline = time.monotonic() + args.step_timeout

    async def delete(uuid: str) -> None:
        await call(
            client,
            "PUT",
            f"/v1/nodes/{uuid}/maintenance",
            body={"reason": "api_bench cleanup"},
            ok=(202,),
            retry_until=deadline,
            retries=result.retries,
        )
        await call(client, "DELETE", f"/v1/nodes/{uuid}", ok=(204,), retry_until=deadline, retries=result.retries)

    await in_parallel(uuids, delete, args.concurrency)


async def run_once(server: IronworksServer | ExternalServer, args: argparse.Namespace) -> RunResult:
    """One run against a server: (d1), (a), (c), (d2), then (b) on a separate set of nodes."""
    result = RunResult()
    tag = secrets.token_hex(3)  # names stay unique when a --url server is reused
    created: list[str] = []
    async with make_client(server.url, args) as client:
        try:
            root = loads((await call(client, "GET", "/")).content)
            result.raw["server_max_version"] = root.get("default_version", {}).get("version")
            existing = len(await list_nodes(client, "/v1/nodes?fields=uuid&limit=1000"))
            if existing:
                result.notes.append(f"the server already had {existing} nodes: not an empty server")
            result.figures["rss_idle_mib"] = rss_mib(server.pid) if server.pid else None

            async with step("(a) create nodes", args.step_timeout):
                names = [f"bench-{tag}-{i:05d}" for i in range(args.nodes)]
                t0 = time.perf_counter()
                created += await create_nodes(client, names, args)
                elapsed = time.perf_counter() - t0
            result.figures["create_nodes_per_s"] = args.nodes / elapsed
            result.raw["create_elapsed_s"] = elapsed

            expected = min(existing + args.nodes, 1000)
            async with step("(c) list latency", args.step_timeout):
                await measure_list(client, "/v1/nodes/detail", args, expected, result, "detail")
                await measure_list(client, "/v1/nodes?limit=1000", args, expected, result, "limit")
            result.figures["rss_loaded_mib"] = rss_mib(server.pid) if server.pid else None

            resource_class = f"bench-deploy-{tag}"
            async with step("(b) create the nodes to deploy", args.step_timeout):
                names = [f"bench-{tag}-deploy-{i:05d}" for i in range(args.deploy_nodes)]
                deploy = await create_nodes(client, names, args, {"resource_class": resource_class})
                created += deploy
            await provision(client, deploy, resource_class, args, result)
            result.raw["rss_after_deploy_mib"] = rss_mib(server.pid) if server.pid else None
        finally:
            server.check_alive()  # a dead server explains any error above better than the error does
            if isinstance(server, ExternalServer) and created and not args.keep_nodes:
                try:
                    async with step("cleanup", args.step_timeout):
                        await delete_nodes(client, created, args, result)
                except BenchError as exc:  # must not hide the error that ended the run
                    print(f"warning: could not delete the {len(created)} benchmark nodes: {exc}", file=sys.stderr)
    result.raw["retries"] = dict(result.retries)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="benchmark the server at this URL (Ironworks or Ironic), start none")
    where.add_argument(
        "--start-ironworks",
        action="store_true",
        help="start a fresh `ironworks serve` per run (the default without --url)",
    )
    p.add_argument("--pid", type=int, help="with --url: the server's PID, to report its memory (RSS)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nodes", type=int, default=1000, help="nodes created for (a), listed for (c)")
    p.add_argument("--deploy-nodes", type=int, default=200, help="nodes taken to active for (b)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmups", type=int, default=3)
    p.add_argument("--samples", type=int, default=30, help="timed GETs per listing for (c)")
    p.add_argument("--api-version", default="1.87", help="X-OpenStack-Ironic-API-Version of every request")
    p.add_argument("--driver", default="fake-hardware")
    p.add_argument("--basic-auth", metavar="USER:PASSWORD", help="for a server with http_basic auth")
    p.add_argument("--keep-nodes", action="store_true", help="with --url: leave the created nodes behind")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--phase-timeout", type=float, default=120.0, help="seconds per provisioning phase of (b)")
    p.add_argument("--step-timeout", type=float, default=600.0, help="seconds for each other step")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds for the server to answer")
    p.add_argument("--json", metavar="FILE", help="write every raw figure to FILE")
    args = p.parse_args(argv)
    if args.deploy_nodes > 1000:
        p.error("--deploy-nodes is at most 1000 (one page of the polling request)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark ``--runs`` times and print the table; 1 on an error."""
    args = parse_args(argv)
    runs: list[RunResult] = []
    try:
        for i in range(args.runs):
            server = (
                ExternalServer(args.url, args.pid) if args.url else IronworksServer(start_timeout=args.start_timeout)
            )
            with server:
                print(
                    f"run {i + 1}/{args.runs} against {server.url} (pid {server.pid or 'unknown'})",
                    flush=True,
                )
                result = asyncio.run(run_once(server, args))
            runs.append(result)
            print("  " + ", ".join(f"{k}={fmt(v)}" for k, v in result.figures.items()), flush=True)
            for note in result.notes:
                print(f"  note: {note}", flush=True)
    except (BenchError, ServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    median = summarize(runs)
    print()
    print(render_table(runs, median))
    if (args.nodes, args.deploy_nodes, args.concurrency) != (1000, 200, 8):
        print("note: the targets and the reference are for --nodes 1000 --deploy-nodes 200 --concurrency 8")
    print(
        "\nIronic 39: Ironic 39.0.0 standalone, measured by the issue author on this machine class. "
        "RSS is VmRSS of the server process and its children."
    )
    if args.json:
        doc = {
            "config": {k: v for k, v in vars(args).items() if k != "basic_auth"},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
            "figures": {
                f.key: {
                    "label": f.label.strip(),
                    "unit": f.unit,
                    "target": f.target,
                    "higher_is_better": f.higher_is_better,
                    "reference": f.reference,
                }
                for f in FIGURES
            },
            "median": median,
            "runs": [{"figures": r.figures, "raw": r.raw, "notes": r.notes} for r in runs],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"raw figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
