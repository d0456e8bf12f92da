"""What a node shows of its actors (issue 22): Prometheus metrics, scraped from a real node
after a known mix of calls and read with prometheus-client's own parser; JSON logs."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from cluster import free_port
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from processes import ROOT
from prometheus_client.parser import text_string_to_metric_families
from support import Probe
from up import embedded

from actorbus import (
    Client,
    DeadlineExceeded,
    Forbidden,
    Keypair,
    NotFound,
    RateLimited,
    Settings,
    serve,
)
from actorbus.actors.jobs import Jobs
from actorbus.bus import BadRequest
from actorbus.bus.tracing import use_trace


async def known_mix(settings: Settings) -> tuple[str, int, int]:
    """5 x 200, a 400, a 404 (no such function), a 408, a stream, a finished job of 3
    slices; and a stranger (role public, which may call echo but its sleep) gets a 403 and
    calls until its quota says 429. The admin's address, the stream's chunks and the stranger's
    200s."""
    async with Client(settings=settings) as client:
        for _ in range(5):
            await client.call("echo", "forward", "hi")
        with pytest.raises(BadRequest):
            await client.call("echo", "add", 1, "x")
        with pytest.raises(NotFound):
            await client.call("echo", "nope")
        with pytest.raises(DeadlineExceeded):
            await client.request("echo", "sleep", [5], timeout=0.5)
        chunks = [c async for c in client.stream("llm", "generate", "hi there")]
        assert "".join(chunks).startswith("You said: hi there. ")
        job = await client.submit("echo/add", [[1, 2], [3, 4], [5, 6]])
        await job.close()
        assert (await job.wait())["done"] == 3
        await client.call("policy", "edit_role", "public", ["echo/*"], ["echo/sleep"])
        await anyio.sleep(0.5)  # the role reaches the hosts through a watch
        async with Client(Keypair.generate(), settings=settings) as stranger:
            with pytest.raises(Forbidden):  # the deny rule, decided at the replica
                await stranger.call("echo", "sleep", 0)
            allowed, limited = 0, False
            for _ in range(200):  # the floor is 60 calls a minute
                try:
                    await stranger.call("echo", "forward", "hi")
                except RateLimited:
                    limited = True
                    break
                allowed += 1
            assert limited
        return client.key.address, len(chunks), allowed


def samples(text: str, name: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name``, by their labels but node (sorted)."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = tuple(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "node")
                found[labels] = sample.value
    return found


def test_a_scrape_counts_a_known_mix_of_calls(tmp_path: Path) -> None:
    web = free_port()
    with embedded(tmp_path, ACTOR_GATEWAY_PORT=str(web), ACTOR_NATS_MONITOR="1") as bus:
        bus.actor("up", "-d", "examples/llm.py:Llm")
        node = json.loads((bus.settings.home / "node.json").read_text())
        url = node["metrics"]
        assert url.startswith("http://127.0.0.1:")
        # The embedded nats-server's own monitoring, if asked for: on loopback too.
        assert node["nats_monitor"].startswith("http://127.0.0.1:")
        varz = httpx.get(node["nats_monitor"] + "/varz", timeout=10).json()
        assert varz["jetstream"]["config"]["store_dir"].startswith(str(bus.settings.home))
        caller, streamed, allowed = anyio.run(known_mix, bus.settings)
        text = httpx.get(url, timeout=10).text
        assert httpx.get(url.replace("/metrics", "/other"), timeout=10).status_code == 404
        # The gateway's /metrics: its own requests by route template, and the cluster's.
        gateway = f"http://127.0.0.1:{web}"
        for path in ("/health", "/health", "/nope"):
            httpx.get(gateway + path, timeout=10)
        cluster = httpx.get(gateway + "/metrics", timeout=10)
        assert cluster.headers["content-type"].startswith("text/plain")
    requests = samples(cluster.text, "actorbus_gateway_requests_total")
    assert requests[("replica=0", "route=/health", "status=200")] == 2
    assert requests[("replica=0", "route=other", "status=404")] == 1
    assert samples(cluster.text, "actorbus_gateway_open_connections")[("replica=0",)] >= 1
    assert samples(cluster.text, "actorbus_gateway_sse_streams")[("replica=0",)] == 0
    seen = samples(cluster.text, "actorbus_calls_total")
    assert seen[("actor=echo", "fn=forward", "replica=0", "status=200")] == 5 + allowed
    # deploy/'s Grafana dashboard queries only what a real scrape of the gateway has (its
    # Prometheus, deploy/prometheus.yml, scrapes the gateway).
    names = {
        sample.name
        for family in text_string_to_metric_families(cluster.text)
        for sample in family.samples
    }
    dashboard = json.loads((ROOT / "deploy/grafana/actorbus.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"actorbus_[a-z_]+", e)}
    assert len(exprs) >= 10 and queried and queried <= names, queried - names
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["gateway:8080"]
    (k8s,) = yaml.safe_load((ROOT / "deploy/kubernetes/prometheus-scrape.yaml").read_text())
    assert k8s["metrics_path"] == scrape["metrics_path"] == "/metrics"

    calls = samples(text, "actorbus_calls_total")
    echo = ("actor=echo", "fn={}", "replica=0", "status={}")

    def count(fn: str, status: int, labels: Any = echo) -> float:
        key = tuple(
            label.format(fn) if "fn=" in label else label.format(status) for label in labels
        )
        return calls.get(key, 0.0)

    assert count("forward", 200) == 5 + allowed
    assert count("forward", 429) == 1 and allowed >= 50
    assert count("sleep", 403) == 1
    assert count("add", 200) == 3  # the job's slices
    jobs = samples(text, "actorbus_jobs_finished")
    assert jobs[("actor=jobs", "replica=0")] == 1
    assert samples(text, "actorbus_job_slices_done")[("actor=jobs", "replica=0")] == 3
    assert count("add", 400) == 1
    assert count("_other", 404) == 1
    assert count("sleep", 408) == 1
    assert calls[("actor=llm", "fn=generate", "replica=0", "status=200")] == 1
    chunks = samples(text, "actorbus_stream_chunks_total")
    assert chunks[("actor=llm", "fn=generate", "replica=0")] == streamed
    # The histograms time the calls that ran: forward's, but add's 400 was refused before
    # it ran (its arguments did not bind) and sleep's 403 too; sleep ran to its deadline.
    for kind in ("queue", "handler"):
        counts = samples(text, f"actorbus_call_{kind}_seconds_count")
        ran = 5 + allowed + 1  # the 429 too: a worker takes a call, then its quota
        assert counts[("actor=echo", "fn=forward", "replica=0")] == ran
        assert counts[("actor=echo", "fn=sleep", "replica=0")] == 1
        buckets = samples(text, f"actorbus_call_{kind}_seconds_bucket")
        forward = [v for k, v in buckets.items() if k[:2] == ("actor=echo", "fn=forward")]
        assert forward == sorted(forward) and max(forward) == ran  # cumulative, +Inf = count
    handled = samples(text, "actorbus_call_handler_seconds_sum")
    assert 0.2 < handled[("actor=echo", "fn=sleep", "replica=0")] < 2.0  # its deadline
    up = samples(text, "actorbus_replica_up")
    assert up[("actor=echo", "replica=0")] == 1 and up[("actor=llm", "replica=0")] == 1
    assert caller not in text  # no label names a caller


def test_json_logs_take_a_user_from_an_error_id_to_its_line(tmp_path: Path) -> None:
    """... and from a web request's W3C trace to the actor's line for it: the gateway
    passes the trace on, and gives its traceparent back."""
    web = free_port()
    with embedded(tmp_path, ACTOR_LOG_FORMAT="json", ACTOR_GATEWAY_PORT=str(web)) as bus:
        done = bus.run("call", "echo/add", "1", "x")
        error_id = done.stderr.rsplit("(error id ", 1)[1].split(")")[0]
        bus.actor("policy", "role", "add", "public", "--allow", "echo/*")
        url, traced = f"http://127.0.0.1:{web}/echo/add?a=1&b=x", {"traceparent": PARENT}
        for _ in range(50):  # the role reaches the gateway through a watch
            answer = httpx.get(url, headers=traced, timeout=10)
            if answer.status_code != 403:
                break
            time.sleep(0.1)
        assert answer.status_code == 400 and answer.headers["traceparent"] == PARENT
        web_error = answer.json()["id"]
        lines = [json.loads(line) for line in bus.actor("logs", "echo", "--json").splitlines()]
    assert {"time", "node", "actor", "replica", "pid", "line"} <= lines[0].keys()
    written = [json.loads(line["line"]) for line in lines]  # each replica line is JSON too
    refusal = next(w for w in written if w.get("error_id") == error_id)
    assert refusal["level"] == "INFO" and refusal["actor"] == "echo" and refusal["replica"] == 0
    assert refusal["time"].endswith("Z") and "400" in refusal["message"]
    node_log = (bus.settings.home / "node.log").read_text().splitlines()
    assert node_log and all(json.loads(line)["time"] for line in node_log)  # one object a line
    from_web = next(w for w in written if w.get("error_id") == web_error)
    assert from_web["trace_id"] == PARENT[3:35]


def test_top_renders_live_under_a_terminal(tmp_path: Path) -> None:
    """`actor top` under a pseudo-terminal, as a user runs it: the live table shows the
    calls a client is making, and Ctrl-C ends it without a traceback."""
    with embedded(tmp_path) as bus:
        calling = threading.Event()

        def load() -> None:
            async def calls() -> None:
                async with Client(settings=bus.settings) as client:
                    for _ in range(400):  # bounded: about 3 s at most here
                        await client.call("echo", "forward", "hi")
                        calling.set()
                        await anyio.sleep(0.005)

            anyio.run(calls)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        assert calling.wait(20)
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        process = subprocess.Popen(
            [sys.executable, "-m", "actorbus.cli", "top", "--interval", "0.5"],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=bus.env,
            start_new_session=True,
        )
        os.close(terminal)
        shown = b""
        deadline = time.monotonic() + 20
        while b"forward" not in shown and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                shown += os.read(controller, 65536)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(10) == 0
        with contextlib.suppress(OSError):  # the terminal closed with the process
            while select.select([controller], [], [], 0.2)[0]:
                shown += os.read(controller, 65536)
        os.close(controller)
        loader.join(30)
    text = shown.decode(errors="replace")
    assert "actor top" in text and "calls/s" in text and "forward" in text, text[-2000:]
    assert "Traceback" not in text


def test_the_metrics_endpoint_holds_a_few_connections_at_most(tmp_path: Path) -> None:
    """A local process that opens connections and sends nothing holds at most 8 of them
    (each for 5 s); the next is closed at once, and the endpoint serves when they go."""
    with embedded(tmp_path) as bus:
        url = json.loads((bus.settings.home / "node.json").read_text())["metrics"]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                extra.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                assert extra.recv(100) == b""  # closed unanswered
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert httpx.get(url, timeout=10).status_code == 200


PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_trace_goes_on_through_nested_calls_and_job_slices(
    settings: Settings, name: str
) -> None:
    """A caller's W3C trace reaches the actor, the actor's own calls and a job's slices
    unchanged (nothing records spans: it passes them on); a malformed one is dropped, and
    the call is answered all the same."""
    inner = f"{name}in"
    async with (
        serve(Probe(), name=name, settings=settings),
        serve(Probe(), name=inner, settings=settings),
        serve(Jobs(), name=settings.jobs, settings=settings),
        Client(settings=settings) as client,
    ):
        assert await client.call(name, "trace") == ""  # no trace: none made up
        use_trace({"traceparent": PARENT, "tracestate": "vendor=a1"})
        assert await client.call(name, "trace") == PARENT
        assert await client.call(name, "trace", inner) == PARENT  # a nested call
        job = await client.submit(f"{name}/trace", [[], [inner]])
        await job.close()
        assert [r["value"] async for r in job.results()] == [PARENT, PARENT]
        for bad in ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", PARENT.upper(), PARENT + "x"):
            use_trace({"traceparent": bad})
            assert await client.call(name, "trace") == ""


class Receiver:
    """A real OTLP/HTTP traces endpoint (``/v1/traces``, protobuf), recording the spans it
    is sent: (name, trace id, span id, parent span id), ids in hex."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []
        received = self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            received.append(
                                (
                                    span.name,
                                    span.trace_id.hex(),
                                    span.span_id.hex(),
                                    span.parent_span_id.hex(),
                                )
                            )
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_spans_follow_a_web_request_through_actors_and_a_job(tmp_path: Path) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set (and the otel extra), a real OTLP receiver gets
    one trace per web request: the gateway's span, its call, the actor's span with its
    accept, queue and handler, the handler's nested call and the nested actor's span; a
    job's slices are calls in the trace of its submit."""
    receiver = Receiver()
    web = free_port()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    try:
        with embedded(tmp_path, ACTOR_GATEWAY_PORT=str(web), **otel) as bus:
            for name in ("probe", "inner"):
                bus.actor("up", "-d", "tests/support.py:Probe", "--name", name)
            allow = ("--allow", "probe/*", "--allow", "inner/*", "--allow", "jobs/*")
            bus.actor("policy", "role", "add", "public", *allow)
            url = f"http://127.0.0.1:{web}/probe/trace?through=inner"
            for _ in range(50):  # the role reaches the gateway through a watch
                answer = httpx.get(url, headers={"traceparent": PARENT}, timeout=10)
                if answer.status_code != 403:
                    break
                time.sleep(0.1)
            assert answer.status_code == 200, answer.text
            trace = PARENT[3:35]
            in_job = httpx.post(  # an actor's job: its slices in the web request's trace
                f"http://127.0.0.1:{web}/probe/trace_job",
                json={"args": ["inner/trace"]},
                headers={"traceparent": PARENT.replace(trace, "3" * 32)},
                timeout=30,
            )
            assert in_job.status_code == 200, in_job.text
            streamed = httpx.get(
                f"http://127.0.0.1:{web}/probe/tokens?text=a+b",
                headers={"traceparent": PARENT.replace(trace, "2" * 32)},
                timeout=10,
            )
            assert "event: end" in streamed.text
            job = httpx.post(
                f"http://127.0.0.1:{web}/api/v0/job",
                json={"work": "inner/trace", "slices": [[]]},
                headers={"traceparent": PARENT.replace(trace, "1" * 32)},
                timeout=10,
            )
            assert job.status_code == 200, job.text
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                names = {(n, t) for n, t, _, _ in receiver.spans}
                wanted = {
                    ("inner/trace", trace),
                    ("inner/trace", "1" * 32),
                    ("inner/trace", "3" * 32),
                }
                if wanted | {("probe/tokens", "2" * 32)} <= names:
                    break
                time.sleep(0.2)
    finally:
        receiver.close()
    mine = [s for s in receiver.spans if s[1] == trace]
    by_id = {span_id: (name, parent) for name, _, span_id, parent in mine}

    def chain(span_id: str) -> list[str]:
        """The names from span ``span_id`` up to the root of its trace."""
        names = []
        while span_id in by_id:
            name, span_id = by_id[span_id]
            names.append(name)
        return names

    # The nested actor's span, the handler's call to it, the handler, the actor's span,
    # the gateway's call, the gateway's request; above it, the web client's span (outside).
    chains = [chain(span_id) for name, _, span_id, _ in mine if name == "inner/trace"]
    whole = ["inner/trace", "inner/trace", "handler", "probe/trace", "probe/trace"]
    assert [*whole, "GET /{name}/{fn}"] in chains, mine
    assert {"accept (verify, policy)", "queue", "handler"} <= {n for n, _, _, _ in mine}
    assert PARENT[36:52] in {parent for _, _, _, parent in mine}  # the web client's span
    # One trace from the web request down to the slice of a job the actor submitted.
    third = [s for s in receiver.spans if s[1] == "3" * 32]
    by_id = {span_id: (name, parent) for name, _, span_id, parent in third}
    chains = [chain(span_id) for name, _, span_id, _ in third if name == "inner/trace"]
    slice_chain = ["inner/trace", "inner/trace"]  # the slice's call and the nested actor's
    assert any(c[:2] == slice_chain and c[-1] == "POST /{name}/{fn}" for c in chains), chains
    assert any("jobs/submit" in c or "probe/trace_job" in c for c in chains), chains
    # A stream through the gateway: its call and the replica's span, in the web trace.
    stream = [n for n, t, _, _ in receiver.spans if t == "2" * 32]
    assert {"GET /{name}/{fn}", "handler"} <= set(stream), stream
    assert stream.count("probe/tokens") == 2, stream  # the gateway's call, the replica's
    job_spans = {n for n, t, _, _ in receiver.spans if t == "1" * 32}
    assert {"POST /api/v0/job", "inner/trace"} <= job_spans, job_spans
