#!/usr/bin/env python3
"""Renders docs/benchmarks.md from the saved results in docs/bench/*.json.

The measuring scripts (bench.py, loadtest.py, profile.py) each save one JSON file and call
render(); running this file alone re-renders from what is saved. docs/bench/notes.md, when
present, is appended as the hand-written commentary on the figures.
"""
import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench"
DOC = ROOT / "docs" / "benchmarks.md"

TARGETS = {
    "student_gru64.train_examples_per_s": 2.0,
    "teacher_bilstm256x2.train_examples_per_s": 1.2,
    "student_gru64.infer_b64_examples_per_s": 1.5,
    "student_gru64.infer_b1_examples_per_s": 3.0,
}
NAMES = {
    "student_gru64": "student (emb 64 + GRU 64)",
    "teacher_bilstm256x2": "teacher (emb 128 + 2-layer BiLSTM 256)",
    "train_examples_per_s": "train",
    "infer_b64_examples_per_s": "infer b64",
    "infer_b1_examples_per_s": "infer b1",
}


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def machine_info():
    """CPU model, cores, SIMD flags, memory, kernel, compiler and commit of this run."""
    cpu = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu_model": cpu.get("model name", platform.processor()),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "simd": [f for f in ("avx2", "fma", "avx512f") if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "rustc": command_output(["rustc", "--version"]),
        "commit": command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "load_before": os.getloadavg(),
    }


def command_output(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def save_result(name, result):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    print(f"saved {path.relative_to(ROOT)}")


def load_result(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def machine_section(result):
    m = result["machine"]
    load = ", ".join(f"{x:.1f}" for x in m.get("load_before", []))
    return [
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"({m['usable_cpus']} usable), SIMD {' '.join(m['simd'])}, {m['memory_gib']} GiB",
        f"- kernel {m['kernel']}; {m['rustc']}; commit {m['commit']}"
        + (f"; torch {m['torch']}" if m.get("torch") else ""),
        f"- load average when the run started: {load} (other work shares this machine: "
        "absolute figures are noisy, the paired ratios much less so)",
        f"- date: {result['date']}",
    ]


def microbench_section(result):
    s = result["summary"]
    st = result["settings"]
    lines = [
        "## Micro-benchmark: distillery against PyTorch",
        "",
        f"`{result['command'].strip()}`: {st['rounds']} rounds, each running our benchmark "
        f"with Candle thread counts {st['threads']} and the PyTorch reference with "
        f"{st['torch_threads']} threads, in alternating order; {st['steps']} training "
        f"steps, {st['single_steps']} single predictions. Examples/s, medians; each side at "
        "its faster thread count for that figure; the ratio is the median of the per-round "
        "ratios ours/PyTorch.",
        "",
        *machine_section(result),
        "",
        "| model | figure | distillery | threads | PyTorch | threads | ratio | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, e in s.items():
        if key.endswith(".gemm"):
            continue
        model, fig = key.split(".")
        target = TARGETS.get(key)
        ratio = e.get("ratio_median")
        mark = "" if target is None or ratio is None else (" ok" if ratio >= target else " **no**")
        lines.append(
            f"| {NAMES[model]} | {NAMES[fig]} | {fmt(e['ours_median'])} | {e['threads']} | "
            f"{fmt(e.get('torch_median'))} | {e.get('torch_threads', '-')} | {fmt(ratio, 2)} | "
            f"{'-' if target is None else f'>= {target}'}{mark} |")
    lines += ["", "Medians by thread count (ours: `RAYON_NUM_THREADS`; PyTorch: "
              "`torch.set_num_threads`):", "",
              "| model | figure | " + " | ".join(f"ours {t}" for t in st_threads(st, "threads"))
              + " | " + " | ".join(f"PyTorch {t}" for t in st_threads(st, "torch_threads"))
              + " |", "|---|---|" + "---:|" * (len(st_threads(st, "threads"))
                                             + len(st_threads(st, "torch_threads")))]
    for key, e in s.items():
        if key.endswith(".gemm"):
            continue
        model, fig = key.split(".")
        cells = [by_threads(e["ours_median_by_threads"], t) for t in st_threads(st, "threads")]
        cells += [by_threads(e.get("torch_median_by_threads", {}), t)
                  for t in st_threads(st, "torch_threads")]
        lines.append(f"| {NAMES[model]} | {NAMES[fig]} | {' | '.join(cells)} |")
    return lines + [""] + gemm_section(s)


def st_threads(settings, key):
    return [int(t) for t in str(settings[key]).split(",")]


def by_threads(medians, t):
    """A median by thread count; JSON turned the integer keys into strings."""
    return fmt(medians.get(str(t), medians.get(t)))


def gemm_section(summary):
    lines = [
        "## Share of the machine's matrix-product rate",
        "",
        "Model FLOPs count the matrix products of a training step (forward, input and weight "
        "gradients: about 3x the forward products; elementwise gate arithmetic not counted), "
        "from `gemm_shapes` in `src/ml/bench.rs`. The GEMM rate is Candle's `f32` matmul timed "
        "on each of those shapes in the same process (`distillery bench --gemm-ms N`), so the "
        "fraction is (time the step's products take at the measured rates) / (measured step "
        "time).",
        "",
        "| model | GFLOP per training example | threads | achieved GFLOP/s | fraction of GEMM rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, g in summary.items():
        if not key.endswith(".gemm"):
            continue
        model = key.split(".")[0]
        for t, v in g["by_threads"].items():
            lines.append(f"| {NAMES[model]} | {g['train_gflop_per_example']:.4f} | {t} | "
                         f"{v['train_gflops']:.1f} | {100 * v['train_gemm_fraction']:.0f}% |")
    for key, g in summary.items():
        if not key.endswith(".gemm"):
            continue
        lines += ["", f"Measured GEMM rates, {NAMES[key.split('.')[0]]} (last run):", "",
                  "| product | m x k x n | per step | GFLOP/s |", "|---|---|---:|---:|"]
        for sh in g["shapes_last_run"]:
            lines.append(f"| {sh['label']} | {sh['m']} x {sh['k']} x {sh['n']} | "
                         f"{sh['count']} | {sh['gflops']:.1f} |")
    return lines + [""]


def profile_section(result):
    lines = [
        "## Profile of the training step",
        "",
        f"`{result['command']}` ({result['date']}): `perf record --call-graph dwarf` on "
        "`distillery bench --phases train`, one Candle thread. Buckets attribute each sample "
        "to the innermost model-level operation on its stack (see `scripts/profile.py`); top "
        "entries are self time by function.",
        "",
    ]
    for model, p in result["models"].items():
        lines += [f"### {NAMES.get(model, model)}: {p['samples']} samples", "",
                  "| where the time goes | share |", "|---|---:|"]
        lines += [f"| {name} | {100 * share:.1f}% |" for name, share in p["buckets"]]
        lines += ["", "| top functions (self) | share |", "|---|---:|"]
        lines += [f"| `{name}` | {100 * share:.1f}% |" for name, share in p["top_self"]]
        lines.append("")
    return lines


def loadtest_section(result):
    s = result["settings"]
    lines = [
        "## Load test of `/predict`",
        "",
        f"`{result['command']}` ({result['date']}): `distillery serve` on 127.0.0.1 with a "
        f"fresh data dir, a {s['model_note']}; load from `{result['generator']}`; one short "
        f"text per request. Serve settings: `{s['serve_flags']}`.",
        "",
        *machine_section(result),
        "",
        "| condition | clients | requests | req/s | p50 ms | p90 ms | p99 ms | 503s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['condition']} | {row['clients']} | {row['requests']} | {fmt(row['rps'])} | "
            f"{fmt(row['p50_ms'], 2)} | {fmt(row['p90_ms'], 2)} | {fmt(row['p99_ms'], 2)} | "
            f"{row['status_503']} | {row['errors']} |")
    lines += ["", "Checks against the targets:", ""]
    lines += [f"- {c['what']}: {c['value']} (target {c['target']}) {'ok' if c['ok'] else '**no**'}"
              for c in result["checks"]]
    overload = result.get("overload")
    if overload:
        lines += ["", f"Overload ({overload['note']}): {overload['summary']}"]
    return lines + [""]


def render():
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by scripts/benchdoc.py from docs/bench/*.json; do not edit by hand. "
        "Re-run the commands below to refresh. -->",
        "",
        "Commands (from the repository root):",
        "",
        "- `python3 scripts/bench.py [--rounds N]`: micro-benchmark against PyTorch, "
        "alternating, with the GEMM-rate fraction (needs PyTorch for the ratios: "
        "`TORCH_PYTHON`, default `~/venvs/torch/bin/python`; reference script from "
        "`TORCH_BENCH`, default `../shared/bench/torch_microbench.py`).",
        "- `scripts/loadtest.sh`: load test of `/predict` on a local `distillery serve` "
        "(needs `wrk`: `apt-get install wrk`).",
        "- `python3 scripts/profile.py`: perf profile of the training step (needs `perf`).",
        "- `python3 scripts/benchdoc.py`: re-render this page from the saved results.",
        "",
    ]
    for name, section in [("microbench", microbench_section), ("profile", profile_section),
                          ("loadtest", loadtest_section)]:
        result = load_result(name)
        if result:
            lines += section(result)
    notes = RESULTS / "notes.md"
    if notes.is_file():
        lines += ["## Notes (written by hand)", "", notes.read_text().strip(), ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    render()
