"""Load test of ``fewstep serve``: N concurrent clients against a local server, beside the offline
batch throughput of the same model, prompts and configuration measured in the same run.

For each client count N the script

1. measures the offline throughput: ``fewstep.generate`` on batches of N prompts (the arith test
   questions, through the chat template), in this process;
2. sends requests from N concurrent clients (threads, closed loop: each sends its next request
   when the last one is answered), every other request streaming (server-sent events), to a server it
   starts itself (``python -m fewstep.cli serve`` on a free loopback port, ``--max-batch-size``
   the largest N) or to ``--url``;
3. reports requests and answer tokens per second, latency p50 / p90 / p99 (streams: also the time
   to the first text), the server's mean batch size (its ``/metrics``), errors, and the ratio of
   the server's throughput to the offline one. Steps 1 and 2 alternate ``--repeats`` times and the
   throughputs are the medians (the machine may be shared: alternation spreads its load over both).

Both sides run with the same number of torch threads (``--threads``). Results: a Markdown table on
stdout and one JSON line per client count in ``--out``. Every loop is bounded by its request count
and by ``--max-seconds``; traffic goes to loopback only.

    nice -n 10 python scripts/load_test.py --clients 1,8,32,128 --out runs/load_test.jsonl
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


class Client:
    """One HTTP/1.1 keep-alive connection to the server."""

    def __init__(self, url: str, timeout: float):
        u = urlparse(url)
        self.host, self.port, self.timeout = u.hostname or "127.0.0.1", u.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def chat(self, body: dict) -> dict:
        """Send one chat request; -> {ok, latency, first (streams), tokens, nfe, batch, error}."""
        t0 = time.perf_counter()
        out: dict = {"ok": False, "stream": bool(body.get("stream")), "first": None, "tokens": 0, "batch": None}
        try:
            conn = self._connection()
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                out["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            elif body.get("stream"):
                self._read_stream(resp, t0, out)
            else:
                answer = json.loads(resp.read())
                out.update(ok=True, tokens=answer["usage"]["completion_tokens"], nfe=answer["usage"]["nfe"],
                           batch=answer["fewstep"]["batch_size"][0])
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
            self.close()
        out["latency"] = time.perf_counter() - t0
        return out

    @staticmethod
    def _read_stream(resp, t0: float, out: dict) -> None:
        while True:
            line = resp.readline()
            if not line:
                out["error"] = "the stream ended without [DONE]"
                return
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                out["ok"] = "error" not in out
                resp.read()  # the end of the chunked body, so the connection can carry the next request
                return
            chunk = json.loads(data)
            if "error" in chunk:
                out["error"] = chunk["error"]["message"]
            elif chunk.get("usage"):
                out["tokens"], out["nfe"] = chunk["usage"]["completion_tokens"], chunk["usage"]["nfe"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and out["first"] is None:
                out["first"] = time.perf_counter() - t0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def metrics(url: str) -> dict[str, float]:
    """The server's batch-size histogram sum and count."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        for key in ("fewstep_batch_size_sum", "fewstep_batch_size_count"):
            if line.startswith(key + " "):
                out[key] = float(line.split()[-1])
    return out


def run_clients(url: str, n: int, bodies: list[dict], max_seconds: float) -> tuple[list[dict], float]:
    """``n`` closed-loop clients share ``bodies`` (client i sends bodies i, i + n, ...); -> results, wall."""
    stop_at = time.perf_counter() + max_seconds
    results: list[dict] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def client(i: int) -> None:
        c = Client(url, timeout=max_seconds)
        start.wait()  # every client starts at once
        for body in bodies[i::n]:
            if time.perf_counter() > stop_at:
                break
            r = c.chat(body)
            with lock:
                results.append(r)
        c.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(client, range(n)))
    return results, time.perf_counter() - t0


def offline(model, questions: list[str], cfg, n: int, requests: int) -> tuple[float, float]:
    """Offline throughput: batches of ``n`` prompts through fewstep.generate; -> requests/s, tokens/s."""
    import fewstep

    fewstep.generate(model, questions[:n], cfg)  # warm-up
    done = tokens = 0
    t0 = time.perf_counter()
    while done < requests:
        batch = [questions[(done + i) % len(questions)] for i in range(n)]
        tokens += sum(r.answer_tokens for r in fewstep.generate(model, batch, cfg))
        done += n
    wall = time.perf_counter() - t0
    return done / wall, tokens / wall


def measure(url: str, model, questions: list[str], cfg, n: int, args) -> dict:
    """``args.repeats`` alternations of the offline run and the server run at ``n`` clients; throughputs
    are the medians over the repeats, latencies pooled."""
    total = max(n * args.rounds, args.min_requests)
    bodies = []
    for i in range(total):
        body = {"model": model.name.rsplit("/", 1)[-1], "max_tokens": cfg.gen_length,
                "messages": [{"role": "user", "content": questions[i % len(questions)]}],
                "stream": i % 2 == 1}  # every other request streams
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        bodies.append(body)
    run_clients(url, n, bodies[:n], args.max_seconds)  # warm-up: one request per client
    off, rps, tps, results, batch_sum, batch_count = [], [], [], [], 0.0, 0.0
    for _ in range(args.repeats):
        off.append(offline(model, questions, cfg, n, total))
        before = metrics(url)
        got, wall = run_clients(url, n, bodies, args.max_seconds)
        after = metrics(url)
        ok = [r for r in got if r["ok"]]
        rps.append(len(ok) / wall)
        tps.append(sum(r["tokens"] for r in ok) / wall)
        results += got
        batch_sum += after["fewstep_batch_size_sum"] - before["fewstep_batch_size_sum"]
        batch_count += after["fewstep_batch_size_count"] - before["fewstep_batch_size_count"]
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    first = [r["first"] for r in ok if r["stream"] and r["first"] is not None]
    seen = sorted(r["batch"] for r in ok if r["batch"] is not None)
    off_rps, off_tps = statistics.median(x[0] for x in off), statistics.median(x[1] for x in off)
    return {"clients": n, "requests": len(results), "errors": len(results) - len(ok),
            "error_sample": next((r["error"] for r in results if not r["ok"]), None),
            "rps": statistics.median(rps), "tokens_per_s": statistics.median(tps), "rps_repeats": rps,
            "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90), "p99_s": percentile(lat, 99),
            "first_text_p50_s": percentile(first, 50), "mean_batch": batch_sum / batch_count if batch_count else 0.0,
            "batch_sizes_seen": {b: seen.count(b) for b in sorted(set(seen))},
            "offline_rps": off_rps, "offline_tokens_per_s": off_tps, "offline_rps_repeats": [x[0] for x in off],
            "ratio": statistics.median(rps) / off_rps, "config": cfg.to_dict(), "model": args.model,
            "threads": args.threads, "max_wait_ms": args.max_wait_ms}


def start_server(args, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    src = Path(__file__).resolve().parent.parent / "src"
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "fewstep.cli", "serve", "--model", args.model, "--port", str(port),
           "--max-batch-size", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue",
           str(4 * max_batch), "--log-level", "warning"]
    cmd += [x for s in args.settings for x in ("--set", s)] + (["--strategy", args.strategy] if args.strategy else [])
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            metrics(url)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,8,32,128", help="comma-separated client counts")
    p.add_argument("--model", default="tiny-dlm")
    p.add_argument("--strategy", default=None)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-tokens", type=int, default=None, help="max_tokens of every request (default: the model's)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client (at least --min-requests in all)")
    p.add_argument("--repeats", type=int, default=2, help="alternations of the offline and the server run")
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the offline run")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time limit of each client count's run")
    p.add_argument("--url", default=None, help="an existing server (default: start one)")
    p.add_argument("--out", default=None, help="append one JSON line per client count here")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.clients.split(",")]

    import torch

    import fewstep
    from fewstep.config import resolve_config, with_gen_length
    from fewstep.tasks import arith

    torch.set_num_threads(args.threads)
    model = fewstep.load_model(args.model)
    cfg = resolve_config(model, args.strategy, args.settings)
    if args.max_tokens:
        cfg = with_gen_length(cfg, args.max_tokens)
    questions = [q.question for q in arith.test_set()]
    proc, url = (None, args.url) if args.url else start_server(args, max(counts))
    rows = []
    try:
        for n in counts:
            row = measure(url, model, questions, cfg, n, args)
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                              if k != "config"}), file=sys.stderr, flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(120)
    print("| clients | requests | errors | req/s | tokens/s | p50 s | p90 s | p99 s | first text p50 s | mean batch "
          "| offline req/s (batch = clients) | server / offline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['p50_s']:.2f} | {r['p90_s']:.2f} | {r['p99_s']:.2f} | {r['first_text_p50_s']:.2f} | "
              f"{r['mean_batch']:.1f} | {r['offline_rps']:.2f} | {r['ratio']:.2f} |")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
