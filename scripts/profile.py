#!/usr/bin/env python3
"""Profile of the training step with perf: where the time of `distillery bench` goes.

Runs `perf record --call-graph dwarf` on `distillery bench --phases train` for the student
and the teacher (one Candle thread), then sorts every sample into a bucket: the innermost
model-level operation on its stack (the recurrent kernel's forward or backward, the
optimizer, the embedding gradient, gradient zeroing, matmuls outside the kernels, ...), and
lists the top functions by self time. Saves docs/bench/profile.json and regenerates
docs/benchmarks.md.

    scripts/profile.py [--student-steps 400] [--teacher-steps 20] [--no-build]

Needs `perf` (Debian: apt-get install linux-perf) and permission to use it (root, or
kernel.perf_event_paranoid <= 1).
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (pattern on one stack frame, bucket); frames are scanned innermost first and the first
# frame matching any rule decides. Buckets outside the kernels and the optimizer get the
# phase (forward or backward) from the frames further out.
RULES = [
    (r"kernels::sequence::backward|SequenceOp<T> as .*CustomOp3>::bwd", "recurrent kernel: backward"),
    (r"kernels::sequence::forward_train", "recurrent kernel: forward"),
    (r"kernels::sequence::forward_infer", "recurrent kernel: inference"),
    (r"kernels::projection::.*backward", "input projection op: backward"),
    (r"kernels::projection::", "input projection op: forward"),
    (r"kernels::layer::.*backward|LayerOp<T> as .*CustomOp3>::bwd", "layer op: backward (bias sums, packing)"),
    (r"kernels::layer::", "layer op: forward (biases)"),
    (r"optim::", "optimizer step"),
    (r"index_add", "embedding gradient (index_add)"),
    (r"GradStore::or_insert|zeros_like|zeros_impl", "gradient buffers (zeros)"),
    (r"index_select", "gathers (embedding rows, pooled states)"),
    (r"Tensor::matmul", "matmul outside the kernels (GRU input projection, head)"),
    (r"Tensor::cat\b|Tensor::cat<|cat_contiguous", "concat"),
    (r"reduce_op|sum_keepdim|Tensor::sum", "reductions (bias gradients, loss)"),
    (r"Tensor::add|Tensor::sub|binary_impl|broadcast_add|Tensor::mul", "elementwise add/mul"),
    (r"copy_strided|copy2d|Tensor::contiguous", "copies to contiguous"),
    (r"ml::loss::", "loss"),
    (r"Tensor>::backward", "autograd bookkeeping"),
    (r"Classifier::forward", "model forward: other"),
    (r"Classifier::new|random_batches|ml::rng::", "setup (data, initial weights)"),
]
PHASED = {"embedding gradient (index_add)", "gradient buffers (zeros)",
          "gathers (embedding rows, pooled states)",
          "matmul outside the kernels (GRU input projection, head)", "concat",
          "reductions (bias gradients, loss)", "elementwise add/mul", "copies to contiguous"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student-steps", type=int, default=400)
    p.add_argument("--teacher-steps", type=int, default=20)
    p.add_argument("--frequency", type=int, default=299, help="samples per second")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-docs", action="store_true")
    return p.parse_args()


def binary_path():
    if os.environ.get("DISTILLERY_BIN"):
        return Path(os.environ["DISTILLERY_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "release" / "distillery"


def record(model, steps, frequency, workdir):
    data = Path(workdir) / f"{model}.data"
    cmd = ["perf", "record", "-q", "-F", str(frequency), "--call-graph", "dwarf,32768",
           "-o", str(data), "--", str(binary_path()), "bench", "--models", model,
           "--phases", "train", "--steps", str(steps), "--warmup", "2"]
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800)
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip,sym"],
                         capture_output=True, text=True, check=True, timeout=1800)
    return stacks(out.stdout)


def stacks(text):
    """Each sample's frames, innermost first, as symbol names."""
    samples, frames = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            if frames:
                samples.append(frames)
            frames = []
            continue
        parts = line.split(None, 1)
        frames.append(parts[1].removesuffix(" (inlined)") if len(parts) > 1 else "[unknown]")
    if frames:
        samples.append(frames)
    return samples


def bucket(frames, rules):
    for i, frame in enumerate(frames):
        for pattern, name in rules:
            if pattern.search(frame):
                if name in PHASED:
                    backward = any("Tensor>::backward" in f for f in frames[i:])
                    return f"{name} [{'backward' if backward else 'forward'}]"
                return name
    return "other"


def short(symbol):
    symbol = re.sub(r"\+0x[0-9a-f]+$", "", symbol)
    return symbol if len(symbol) <= 90 else symbol[:87] + "..."


def summarize(samples, top):
    rules = [(re.compile(p), name) for p, name in RULES]
    n = len(samples) or 1
    buckets = collections.Counter(bucket(f, rules) for f in samples)
    selfs = collections.Counter(short(f[0]) for f in samples if f)
    return {"samples": len(samples),
            "buckets": [(k, v / n) for k, v in buckets.most_common()],
            "top_self": [(k, v / n) for k, v in selfs.most_common(top)]}


def main():
    args = parse_args()
    if not args.no_build and not os.environ.get("DISTILLERY_BIN"):
        subprocess.run(["cargo", "build", "--release", "--bin", "distillery"], cwd=ROOT,
                       check=True)
    models = {}
    with tempfile.TemporaryDirectory(prefix="distillery-perf-") as workdir:
        for model, steps in [("student_gru64", args.student_steps),
                             ("teacher_bilstm256x2", args.teacher_steps)]:
            print(f"profiling {model} ({steps} steps)", file=sys.stderr, flush=True)
            models[model] = summarize(record(model, steps, args.frequency, workdir), args.top)
    for model, p in models.items():
        print(f"\n{model}: {p['samples']} samples")
        for name, share in p["buckets"]:
            print(f"  {100 * share:5.1f}%  {name}")
        print("  top self:")
        for name, share in p["top_self"]:
            print(f"  {100 * share:5.1f}%  {name}")
    result = {"date": benchdoc.utc_now(), "command": "scripts/profile.py "
              + " ".join(sys.argv[1:]), "machine": benchdoc.machine_info(), "models": models}
    benchdoc.save_result("profile", result)
    if not args.no_docs:
        benchdoc.render()


if __name__ == "__main__":
    main()
