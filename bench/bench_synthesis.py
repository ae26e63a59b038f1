"""LLM-mode synthesis throughput: the Prefect flow and the core at bounded concurrency vs a sequential loop, same run.

2,000 requests (400 per agent) against the local OpenAI-protocol server with 200 ms simulated latency, run in a
child process so that it does not share the GIL with the client under test. The server answers every request like a
good model (the agent's template output for the asked input), so each sample is exactly one request (no re-asks).

- (a) flow: ``data-synthesis`` with ``mode=llm`` through the real Prefect engine (ephemeral API server, cached
  batch tasks, artifacts), a fresh ``MEDTUNE_HOME`` (so a fresh response cache) per run;
- (b) core: :func:`medtune_core.synthesis.llm_mode.run_llm_mode` alone: the same batch schedule
  (:class:`~medtune_core.synthesis.schedule.BatchSchedule`), batches and ``parallel_batches``, run as coroutines of one
  client on one event loop instead of Prefect tasks, same concurrency;
- (c) sequential: the seed script's loop, the plain synchronous ``openai`` client, one request after another, on a
  subsample (``--seq-requests``) and extrapolated to ``--requests``;
- server ceiling: the same server driven by a minimal raw-socket HTTP/1.1 client at the same concurrency (no SDK):
  the most any client could get from it on this machine.

Prefect's overhead = flow minus core: wall time and CPU per sample, and per run the time before the first request
arrives and after the last answer (the server records when requests arrive and are answered, on the same monotonic
clock). Each measurement is repeated (``--repeat``) and the best and the median are reported (the machine is
shared). Target (issue 3): ≥ 0.8 × concurrency / latency requests/s and ≥ 25× the sequential loop.

    python -m bench.bench_synthesis [--requests 2000] [--latency 0.2] [--concurrency 32] [--also 64] [--repeat 3]
    python -m bench.bench_synthesis --profile      # cProfile of the core run, top functions by own time
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("preprocess", "critic", "check_rag", "diagnosis", "drug")
MODEL = "fake-model"
BATCH_SIZE = 250  # the flow's default batch size; the core run uses the same batches
PARALLEL_BATCHES = [2]  # the flow's default, for the flow and the core; --parallel-batches changes it


# ------------------------------------------------------------------------------------------------ the server (child)
def _serve(latency: float) -> None:
    """Child process: a FakeOpenAIServer answering like a good model; prints its base URL, serves until killed.

    ``GET /v1/models`` is answered by the fake; the request count, and when the requests after the first ``since``
    arrived and were answered, are read with a chat request for model ``bench-stats`` (not counted)."""
    import signal

    from medtune_core.synthesis import get_agent
    from medtune_core.synthesis.requests import USER_PREFIX
    from tests.fakes.openai_server import FakeOpenAIServer, FakeRequest, Reply

    agents = [get_agent(n) for n in AGENTS]
    answered: list[float] = []  # when each counted request was answered (CLOCK_MONOTONIC, as the client's clock)
    lock = threading.Lock()

    def responder(req: FakeRequest) -> str | Reply:
        if req.body.get("model") == "bench-stats":
            since = int(json.loads(req.last_user or "{}").get("since", 0))
            with lock:
                times = answered[since:]
                stats = {"requests": len(answered)}
            if times:  # the first request arrived one latency before the first answer
                stats.update(first_arrival=min(times) - latency, last_answer=max(times))
            return json.dumps(stats)
        with lock:
            answered.append(time.perf_counter())
        system = req.messages[0]["content"]
        agent = next(a for a in agents if system.startswith(a.system_prompt))
        asked = [m["content"] for m in req.messages if m["role"] == "user" and m["content"].startswith(USER_PREFIX)]
        inp = json.loads(asked[-1][len(USER_PREFIX) :])
        return json.dumps(agent.template_output(inp, random.Random(asked[-1])), ensure_ascii=False)

    server = FakeOpenAIServer(responder=responder, latency_s=latency)
    server.start()
    print(server.base_url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


@contextlib.contextmanager
def server_process(latency: float) -> Iterator[str]:
    cmd = [sys.executable, "-m", "bench.bench_synthesis", "--serve", str(latency)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"bench server did not start (got {url!r})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def traffic(url: str, since: int = 0) -> dict[str, float]:
    """The server's own record: ``requests`` answered so far; for those after the first ``since``, when the first
    arrived (``first_arrival``) and the last was answered (``last_answer``), on this machine's monotonic clock
    (``time.perf_counter`` in both processes)."""
    import openai

    ask = [{"role": "user", "content": json.dumps({"since": since})}]
    with openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0) as client:
        resp = client.chat.completions.create(model="bench-stats", messages=ask)
    return json.loads(resp.choices[0].message.content or "{}")


def served(url: str) -> int:
    """Requests the server has answered so far (its own count)."""
    return int(traffic(url)["requests"])


@dataclass
class Timed:
    """One timed run: wall time and this process's CPU time, samples done, and when it started and ended."""

    wall: float
    cpu: float
    samples: int
    started: float
    ended: float

    def phases(self, url: str, since: int) -> tuple[int, float, float, float]:
        """Requests the server answered for this run, and the run's time before the first request arrived, from
        first arrival to last answer (the requests' span), and after the last answer (writing, reporting,
        tearing down)."""
        t = traffic(url, since)
        sent = int(t["requests"]) - since
        first, last = t["first_arrival"], t["last_answer"]
        return sent, first - self.started, last - first, self.ended - last


# ------------------------------------------------------------------------------------------------ the workloads
def per_agent(requests: int) -> int:
    if requests % len(AGENTS):
        raise SystemExit(f"--requests must be a multiple of {len(AGENTS)} (the same number per agent)")
    return requests // len(AGENTS)


def sample_payloads(requests: int, seed: int) -> list[dict[str, Any]]:
    """The requests LLM mode sends (same messages and response_format), round-robin over the agents."""
    from medtune_core.synthesis.llm_mode import DEFAULT_PARAMS, build_chat_requests

    k = -(-requests // len(AGENTS))
    planned = {a: build_chat_requests(a, seed, 0, k) for a in AGENTS}
    out = []
    for i in range(k):
        for a in AGENTS:
            _, _, req = planned[a][i]
            schema = req.schema.model_json_schema()
            out.append(
                {
                    "model": MODEL,
                    "messages": list(req.messages),
                    "response_format": {"type": "json_schema", "json_schema": {"name": a, "schema": schema}},
                    **DEFAULT_PARAMS,
                }
            )
    return out[:requests]


def run_sequential(url: str, payloads: list[dict[str, Any]], out: Path) -> float:
    """(c) The seed script's loop: one blocking request after another, parse the JSON, write a line."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="EMPTY", timeout=60)
    t0 = time.perf_counter()
    with out.open("w", encoding="utf-8") as fh:
        for payload in payloads:
            resp = client.chat.completions.create(**payload)
            answer = json.loads(resp.choices[0].message.content or "")
            fh.write(json.dumps({"input": payload["messages"][-1]["content"], "output": answer}, ensure_ascii=False))
            fh.write("\n")
    elapsed = time.perf_counter() - t0
    client.close()
    return elapsed


def run_core(url: str, requests: int, concurrency: int, seed: int, work: Path) -> Timed:
    """(b) run_llm_mode alone, with the flow's batches and ``parallel_batches``."""
    from medtune_core.llm import LLMConfig
    from medtune_core.synthesis.llm_mode import run_llm_mode

    config = LLMConfig(
        model=MODEL,
        base_url=url,
        api_key="EMPTY",
        concurrency=concurrency,
        cache_path=work / "core-cache.sqlite",
    )
    t0, c0 = time.perf_counter(), time.process_time()
    report = run_llm_mode(
        work / "core-out",
        config,
        "all",
        per_agent(requests),
        seed=seed,
        batch_size=BATCH_SIZE,
        parallel_batches=PARALLEL_BATCHES[0],
    )
    t1, cpu = time.perf_counter(), time.process_time() - c0
    if not report.complete:
        raise RuntimeError(f"core run incomplete: {report.missing}")
    return Timed(t1 - t0, cpu, sum(r.accepted + r.rejected for r in report.reports), t0, t1)


def run_flow(url: str, requests: int, concurrency: int, seed: int, work: Path) -> Timed:
    """(a) the data-synthesis flow, mode=llm, through the Prefect engine; fresh MEDTUNE_HOME → fresh response cache."""
    from flows.data_synthesis import DataSynthesisParams, data_synthesis

    os.environ["MEDTUNE_HOME"] = str(work / "home")  # the LLM batch task reads the cache path from it
    params = DataSynthesisParams(
        agents=["all"],
        num_samples=per_agent(requests),
        mode="llm",
        model=MODEL,
        base_url=url,
        concurrency=concurrency,
        budget=None,
        output_dir=work / "flow-out",
        seed=seed,
        batch_size=BATCH_SIZE,
        parallel_batches=PARALLEL_BATCHES[0],
        preview=1,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    state = data_synthesis(params=params, return_state=True)
    t1, cpu = time.perf_counter(), time.process_time() - c0
    if not state.is_completed():
        raise RuntimeError(f"flow run failed: {state.message}")
    summary = json.loads(Path(state.result()["summary"]).read_text(encoding="utf-8"))
    return Timed(t1 - t0, cpu, summary["totals"]["accepted"] + summary["totals"]["rejected"], t0, t1)


async def _raw_client(host: str, port: int, path: str, bodies: list[bytes], concurrency: int) -> None:
    """Minimal keep-alive HTTP/1.1 POSTs over asyncio streams: what the server can do without any SDK on top."""
    queue = list(reversed(bodies))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                body = queue.pop()
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
                headers = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in headers.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_ceiling(url: str, payloads: list[dict[str, Any]], concurrency: int) -> float:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    bodies = [json.dumps(p, ensure_ascii=False).encode() for p in payloads]
    t0 = time.perf_counter()
    asyncio.run(
        _raw_client(
            parts.hostname or "127.0.0.1", parts.port or 80, parts.path + "/chat/completions", bodies, concurrency
        )
    )
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ driver
def _stats(values: list[float]) -> tuple[float, float]:
    return max(values), statistics.median(values)


def ideal_rate(requests: int, concurrency: int, latency: float) -> float:
    """Requests/s of a client with zero cost. Batches one after another: each in ceil(size/concurrency) waves;
    overlapping batches (``parallel_batches`` > 1) keep the limit full: ceil(requests/concurrency) waves."""
    if PARALLEL_BATCHES[0] > 1:
        return requests / (-(-requests // concurrency) * latency)
    waves = 0
    for size in [requests // len(AGENTS)] * len(AGENTS):
        full, rest = divmod(size, BATCH_SIZE)
        waves += full * -(-BATCH_SIZE // concurrency) + (-(-rest // concurrency) if rest else 0)
    return requests / (waves * latency)


def _profile(url: str, args: argparse.Namespace, root: Path) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    r = run_core(url, args.requests, args.concurrency, 7_000, root / "profile")
    prof.disable()
    print(f"\nprofile: core run {r.samples} samples in {r.wall:.2f}s under cProfile (slower than without)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(40)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--also", type=int, nargs="*", default=[64], help="more concurrency levels to measure")
    parser.add_argument("--seq-requests", type=int, default=100, help="subsample for the sequential loop")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-flow", action="store_true", help="skip (a), the Prefect flow")
    parser.add_argument("--profile", action="store_true", help="also cProfile one core run")
    parser.add_argument("--parallel-batches", type=int, default=2, help="the flow's parallel_batches (default 2)")
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    PARALLEL_BATCHES[0] = args.parallel_batches
    if args.serve is not None:
        _serve(args.serve)
        return {}
    per_agent(args.requests)

    root = Path(tempfile.mkdtemp(prefix="medtune-bench-synthesis-"))
    # Fresh homes before Prefect is imported: results, response caches and the Prefect database all start empty.
    os.environ["MEDTUNE_HOME"] = str(root / "home")
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    os.environ.pop("PREFECT_API_URL", None)
    from tasks.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()

    levels = [args.concurrency, *[c for c in args.also if c != args.concurrency]]
    seq_n = min(args.seq_requests, args.requests)
    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}
    phases: dict[str, list[tuple[float, float, float]]] = {}

    def add(name: str, rate: float, cpu_per_request_ms: float | None = None) -> None:
        rates.setdefault(name, []).append(rate)
        if cpu_per_request_ms is not None:
            cpu_ms.setdefault(name, []).append(cpu_per_request_ms)

    with server_process(args.latency) as url:
        print(
            f"server {url} (child process), latency {args.latency * 1000:.0f} ms, {args.requests} requests, "
            f"concurrency {levels}, {args.repeat} repetitions, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f} at start",
            flush=True,
        )
        # warm-up: imports, the Prefect API server, the SDK; not timed
        run_core(url, len(AGENTS), 4, 999_999, root / "warm-core")
        if not args.no_flow:
            run_flow(url, len(AGENTS), 4, 999_999, root / "warm-flow")
        payloads = sample_payloads(max(seq_n, args.requests), 5_000)
        for rep in range(args.repeat):
            seed = 1_000 + rep
            before = served(url)
            t = run_sequential(url, payloads[:seq_n], root / f"seq-{rep}.jsonl")
            assert served(url) - before == seq_n
            add("sequential", seq_n / t)
            print(f"[{rep}] (c) sequential: {seq_n} requests in {t:.2f}s = {seq_n / t:.2f} req/s", flush=True)
            for c in levels:
                t = run_ceiling(url, payloads[: args.requests], c)
                add(f"ceiling@{c}", args.requests / t)
                print(f"[{rep}] server ceiling @{c}: {args.requests / t:.1f} req/s (raw sockets)", flush=True)
                work = root / f"rep{rep}-c{c}"
                runs = [("core", "(b) core", run_core)] + ([] if args.no_flow else [("flow", "(a) flow", run_flow)])
                for key, label, run in runs:
                    before = served(url)
                    r = run(url, args.requests, c, seed + 100 * c + (50 if key == "flow" else 0), work)
                    sent, startup, span, teardown = r.phases(url, before)
                    assert r.samples == args.requests and sent == args.requests, (r.samples, sent)
                    add(f"{key}@{c}", sent / r.wall, r.cpu / sent * 1000)
                    phases.setdefault(f"{key}@{c}", []).append((startup, span, teardown))
                    print(
                        f"[{rep}] {label} @{c}: {sent} requests in {r.wall:.2f}s = {sent / r.wall:.1f} req/s; "
                        f"CPU in this process {r.cpu / sent * 1000:.2f} ms/request ({r.cpu / r.wall:.0%} of a core); "
                        f"before the first request {startup:.2f}s, requests {span:.2f}s ({sent / span:.1f} req/s), "
                        f"after the last answer {teardown:.2f}s",
                        flush=True,
                    )
        if args.profile:
            _profile(url, args, root)

    seq_best, seq_med = _stats(rates["sequential"])
    print(
        f"\n== {args.requests} requests, {args.latency * 1000:.0f} ms latency; best / median of {args.repeat}; "
        f"load average {os.getloadavg()[0]:.1f} at the end =="
    )
    print(
        f"(c) sequential loop: {seq_best:.2f} / {seq_med:.2f} req/s (measured on {seq_n} requests, extrapolated: "
        f"{args.requests / seq_med:.0f} s for {args.requests})"
    )
    result: dict[str, Any] = {"sequential": (seq_best, seq_med)}
    for c in levels:
        target = 0.8 * c / args.latency
        print(
            f"-- concurrency {c}: target >= {target:.0f} req/s and >= 25x sequential; zero-cost client with "
            f"{BATCH_SIZE}-sample batches, {PARALLEL_BATCHES[0]} at once: "
            f"{ideal_rate(args.requests, c, args.latency):.0f} req/s"
        )
        ceil_best, ceil_med = _stats(rates[f"ceiling@{c}"])
        print(f"   server ceiling (raw sockets): {ceil_best:.1f} / {ceil_med:.1f} req/s")
        result[f"ceiling@{c}"] = (ceil_best, ceil_med)
        for label, key in (("(b) core", f"core@{c}"), ("(a) flow", f"flow@{c}")):
            if key not in rates:
                continue
            best, med = _stats(rates[key])
            verdict = {
                which: "MET" if rate >= target and rate / seq_med >= 25 else "MISSED"
                for which, rate in (("best", best), ("median", med))
            }
            print(
                f"   {label}: {best:.1f} / {med:.1f} req/s; x{best / seq_med:.1f} / x{med / seq_med:.1f} sequential; "
                f"CPU {statistics.median(cpu_ms[key]):.2f} ms/request; target {verdict['best']} (best), "
                f"{verdict['median']} (median)"
            )
            result[key] = (best, med)
        if f"flow@{c}" in rates:
            # Prefect's share: flow minus core (same batches and schedule, same server), medians of the repetitions
            (_, fm), (_, cm) = _stats(rates[f"flow@{c}"]), _stats(rates[f"core@{c}"])
            per_sample = (1 / fm - 1 / cm) * 1000
            cpu_diff = statistics.median(cpu_ms[f"flow@{c}"]) - statistics.median(cpu_ms[f"core@{c}"])
            fp = [statistics.median(x) for x in zip(*phases[f"flow@{c}"], strict=True)]
            cp = [statistics.median(x) for x in zip(*phases[f"core@{c}"], strict=True)]
            print(
                f"   Prefect overhead (flow - core, medians): {per_sample:+.2f} ms per sample of wall time; "
                f"{cpu_diff:+.2f} ms of CPU per sample in this process; per run {fp[0] - cp[0]:+.2f}s before the "
                f"first request, {fp[2] - cp[2]:+.2f}s after the last answer; requests {fp[1] - cp[1]:+.2f}s"
            )
            result[f"overhead@{c}"] = {
                "wall_ms_per_sample": per_sample,
                "cpu_ms_per_sample": cpu_diff,
                "startup_s": fp[0] - cp[0],
                "teardown_s": fp[2] - cp[2],
            }
    return result


if __name__ == "__main__":
    main()
