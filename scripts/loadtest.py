#!/usr/bin/env python3
"""Load test of `/predict` on a local `distillery serve` (127.0.0.1 only, bounded).

1. Starts `distillery serve` on a free port of 127.0.0.1 with a fresh data dir.
2. Uploads a generated 3-class dataset and trains a small model (the default student,
   no teacher, 2 epochs) to serve.
3. Idle: latency of one client sending one short text at a time, then throughput with
   1, 16 and 64 concurrent clients (closed loop, fixed durations).
4. The same while a training job (the default teacher and student, shortened) runs in the
   same process.
5. Overload: a second server with a tiny queue, hit by a burst of concurrent requests;
   counts the 503 answers and checks their Retry-After header.
Saves docs/bench/loadtest.json and regenerates docs/benchmarks.md.

Load generator: `wrk` (Debian: apt-get install wrk), closed loop: each connection sends
its next request when the previous answer arrives; latency percentiles are wrk's. Serve settings can be passed after `--`, e.g.
`scripts/loadtest.py -- --train-threads 1 --batch-wait-us 500`.
"""
import argparse
import concurrent.futures
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXT = "the crew was friendly and the flight left on time"
WORDS = {
    "positive": "great lovely wonderful friendly best happy smooth kind clean fast".split(),
    "negative": "awful rude lost late dirty worst broken slow cold angry".split(),
    "neutral": "flight seat gate bag crew ticket meal window train station".split(),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    p.add_argument("--latency-requests", type=int, default=2000)
    p.add_argument("--rows", type=int, default=3000, help="rows of the generated dataset")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the data dir and server log")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("serve_flags", nargs="*", help="extra `distillery serve` flags, after --")
    return p.parse_args()


def binary_path():
    if os.environ.get("DISTILLERY_BIN"):
        return Path(os.environ["DISTILLERY_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "release" / "distillery"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `distillery serve` child process on 127.0.0.1."""

    def __init__(self, data_dir, flags):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(data_dir) / f"serve-{self.port}.log", "w")
        cmd = [str(binary_path()), "serve", "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", str(data_dir), "--poll-ms", "200", *flags]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if request("GET", f"{self.url}/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become healthy in 60 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def request(method, url, body=None, content_type="application/json", timeout=30):
    """(status, headers, parsed JSON body or text)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), decode(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), decode(err.read())


def decode(raw):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def dataset(rows, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        label = rng.choice(list(WORDS))
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(4, 12))]
        words += [rng.choice(WORDS["neutral"]) for _ in range(rng.randint(2, 8))]
        rng.shuffle(words)
        lines.append(json.dumps({"text": " ".join(words), "label": label}))
    return ("\n".join(lines) + "\n").encode()


def upload(server, rows):
    status, _, body = request("POST", f"{server.url}/v1/datasets?name=load", dataset(rows),
                              "application/x-ndjson")
    if status not in (200, 201):
        raise RuntimeError(f"upload failed: {status} {body}")
    return body["id"]


def start_job(server, config):
    status, _, body = request("POST", f"{server.url}/v1/jobs", config)
    if status != 202:
        raise RuntimeError(f"job not accepted: {status} {body}")
    return body["id"]


def job_status(server, job):
    return request("GET", f"{server.url}/v1/jobs/{job}")[2]["status"]


def wait_job(server, job, want, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job_status(server, job)
        if status in want:
            return status
        if status in ("failed", "canceled"):
            raise RuntimeError(f"job {job} ended {status}")
        time.sleep(0.5)
    raise RuntimeError(f"job {job} not {want} after {timeout} s")


def run_load(url, clients, seconds=None, requests=None):
    """One closed-loop wrk measurement: {'requests','rps','p50_ms','p90_ms','p99_ms',...}."""
    body = json.dumps({"text": TEXT})
    return run_wrk(url, body, clients, seconds or max(2.0, requests / 500))


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
local s503 = 0
local others = 0
response = function(status, headers, body)
  if status == 503 then s503 = s503 + 1 elseif status ~= 200 then others = others + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50\\": %%d, \\"p90\\": %%d, " ..
    "\\"p99\\": %%d, \\"socket_errors\\": %%d, \\"non2xx\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_wrk(url, body, clients, seconds):
    # wrk's per-thread response() counters are not shared with done(), so status codes
    # come from summary.errors.status (every non-2xx answer).
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % json.dumps(body))
        script = f.name
    threads = min(clients, 2)
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "-s", script,
           "--timeout", "10s", f"{url}/predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    os.unlink(script)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    return {"requests": res["requests"], "rps": res["requests"] / (res["duration_us"] / 1e6),
            "p50_ms": res["p50"] / 1000, "p90_ms": res["p90"] / 1000,
            "p99_ms": res["p99"] / 1000, "status_503": res["non2xx"],
            "errors": res["socket_errors"]}


def batch_sizes(server):
    """(sum, count) of the predict batch-size histogram from /metrics."""
    text = request("GET", f"{server.url}/metrics")[2]
    found = {"sum": 0.0, "count": 0.0}
    for line in str(text).splitlines():
        for key in found:
            if line.startswith(f"distillery_predict_batch_size_{key}"):
                found[key] += float(line.split()[-1])
    return found["sum"], found["count"]


def measure_all(server, args, condition):
    """The latency run and the three throughput runs; rows for the table."""
    rows = []
    lat = run_load(server.url, 1, requests=args.latency_requests)
    rows.append({"condition": f"{condition}, latency", "clients": 1, **lat})
    for clients in (1, 16, 64):
        before = batch_sizes(server)
        res = run_load(server.url, clients, seconds=args.seconds)
        after = batch_sizes(server)
        batches = after[1] - before[1]
        res["mean_batch"] = (after[0] - before[0]) / batches if batches else None
        rows.append({"condition": f"{condition}, throughput", "clients": clients, **res})
        print(f"  {condition} c={clients}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms, "
              f"mean batch {res['mean_batch']}", file=sys.stderr, flush=True)
    return rows


def overload_check(data_dir, flags):
    """A server with a queue of 2 and batches of 1, hit by 128 requests at once."""
    server = Server(data_dir, [*flags, "--predict-queue", "2", "--batch-max-texts", "1",
                               "--workers", "0"])
    try:
        request("POST", f"{server.url}/predict", {"text": TEXT})  # load the model first
        with concurrent.futures.ThreadPoolExecutor(128) as pool:
            answers = list(pool.map(
                lambda _: request("POST", f"{server.url}/predict", {"text": TEXT}),
                range(128)))
    finally:
        server.stop()
    refused = [a for a in answers if a[0] == 503]
    retry = sorted({a[1].get("Retry-After") or a[1].get("retry-after") for a in refused})
    ok = sum(1 for a in answers if a[0] == 200)
    return {"note": "`--predict-queue 2 --batch-max-texts 1`, 128 requests at once from "
                    "Python threads",
            "answered_200": ok, "answered_503": len(refused), "retry_after": retry,
            "other": len(answers) - ok - len(refused),
            "summary": f"{ok} answered 200, {len(refused)} answered 503 with Retry-After "
                       f"{retry}, {len(answers) - ok - len(refused)} other"}


def checks(rows):
    def row(cond, clients):
        return next(r for r in rows if r["condition"] == cond and r["clients"] == clients)

    idle = row("idle, latency", 1)
    idle1, idle64 = row("idle, throughput", 1), row("idle, throughput", 64)
    train = row("training, latency", 1)
    scale = idle64["rps"] / idle1["rps"]
    return [
        {"what": "idle p50, one client", "value": f"{idle['p50_ms']:.2f} ms",
         "target": "<= 1 ms", "ok": idle["p50_ms"] <= 1.0},
        {"what": "idle p99, one client", "value": f"{idle['p99_ms']:.2f} ms",
         "target": "<= 3 ms", "ok": idle["p99_ms"] <= 3.0},
        {"what": "throughput 64 clients / 1 client", "value": f"{scale:.1f}x",
         "target": ">= 20x", "ok": scale >= 20},
        {"what": "p99 while training / idle p99, one client",
         "value": f"{train['p99_ms'] / idle['p99_ms']:.1f}x", "target": "<= 5x",
         "ok": train["p99_ms"] <= 5 * idle["p99_ms"]},
    ]


def main():
    args = parse_args()
    if not shutil.which("wrk"):
        sys.exit("load generator `wrk` not found: apt-get install wrk")
    if not args.no_build and not os.environ.get("DISTILLERY_BIN"):
        subprocess.run(["cargo", "build", "--release", "--bin", "distillery"], cwd=ROOT,
                       check=True)
    machine = benchdoc.machine_info()
    data_dir = Path(tempfile.mkdtemp(prefix="distillery-load-"))
    flags = args.serve_flags
    server = Server(data_dir, flags)
    try:
        rows, training_state = run_server_phases(server, args)
    finally:
        server.stop()
    overload = overload_check(data_dir, flags)
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    machine["load_after"] = os.getloadavg()

    result = {"date": benchdoc.utc_now(), "generator": "wrk",
              "command": "scripts/loadtest.sh " + " ".join(sys.argv[1:]),
              "settings": {"seconds": args.seconds, "latency_requests": args.latency_requests,
                           "serve_flags": " ".join(flags) or "(defaults)",
                           "model_note": f"default student trained on {args.rows} generated "
                                         "rows (no teacher, 2 epochs)",
                           "training_job": training_state},
              "machine": machine, "rows": rows, "checks": checks(rows), "overload": overload}
    for c in result["checks"]:
        print(f"{c['what']}: {c['value']} (target {c['target']}) {'ok' if c['ok'] else 'NO'}")
    print(f"overload: {overload['summary']}")
    benchdoc.save_result("loadtest", result)
    if not args.no_docs:
        benchdoc.render()


def run_server_phases(server, args):
    """Trains the model to serve, measures idle, then measures during a training job."""
    ds = upload(server, args.rows)
    small = {"dataset_id": ds, "teacher": {"kind": "none"}, "training": {"epochs": 2}}
    job = start_job(server, small)
    wait_job(server, job, {"succeeded"}, 900)
    print("model trained; measuring idle", file=sys.stderr, flush=True)
    rows = measure_all(server, args, "idle")

    # The default job (teacher, then distilled student) with more epochs than the
    # measurements need, canceled afterwards.
    busy = start_job(server, {"dataset_id": ds, "training": {"epochs": 20}})
    wait_job(server, busy, {"running"}, 120)
    time.sleep(2.0)  # past the job's start-up (data, tokenizer) into training steps
    print("training job running; measuring", file=sys.stderr, flush=True)
    rows += measure_all(server, args, "training")
    state = job_status(server, busy)
    request("POST", f"{server.url}/v1/jobs/{busy}/cancel")
    return rows, f"job was `{state}` at the end of the measurements"


if __name__ == "__main__":
    main()
