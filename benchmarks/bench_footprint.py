"""Footprint of the demo stack (issue 15, item 1): memory after a minute, installed size, time to /ready.

(a) Start-up and memory: `ews up` as `make run` runs it (``.venv/bin/ews up``: the bundled demo site with
    its simulator, a fresh data folder, so the demo history is published on this first start unless
    --no-history), on free ports (HTTP, NATS, Redis and the simulated gateway: the demo site copied with
    its port 5020 changed, as the tests do). Time to ``GET /ready`` = 200, from the moment `ews up` is
    started. Then --seconds (60) of running, sampling every process of the stack every 2 s: `ews up`
    itself and every descendant — each target group's process, nats-server and redis-server — found from
    /proc (parent pid). RSS is ``VmRSS`` of /proc/<pid>/status, summed over the processes (shared pages,
    e.g. the interpreter's, counted in each: what the goal means); PSS (``smaps_rollup``: shared pages
    divided among their users) is printed beside it for reference. The figure is the sum at the end of
    the minute; the highest sum seen during it is printed too. --runs (3) fresh stacks, one after the
    other; the figures are their medians.
(b) Installed runtime environment: a throwaway virtual environment made by
    ``uv sync --locked --no-dev --all-packages --link-mode copy --compile-bytecode`` (every workspace member
    and what the lock says they need at run time; no test or lint tools; byte-compiled as setup.sh and the
    Dockerfile do) in a temporary folder; the size is the sum of the regular files' sizes in it (symbolic
    links, such as the one to the Python interpreter, not followed: Python 3.11 is a prerequisite of the
    machine, like redis-server). The goal counts the files the distributions install; the bytecode cache
    compiled from them (``*.pyc``, which Python would otherwise write at run time for the modules it imports)
    is printed beside it. The largest distributions are listed.

Goals: (a) RSS ≤ 450 MB after a minute, /ready ≤ 5 s; (b) ≤ 500 MB. MB here are MiB (2^20 bytes, as
``du -h`` counts). Exit 1 when a goal is missed.

    .venv/bin/python benchmarks/bench_footprint.py [--runs 3] [--seconds 60] [--no-history] [--no-install]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ews_runtime.servers import free_port  # noqa: E402

from tests.browser.product import START_TIMEOUT, tail  # noqa: E402
from tests.helpers import clean_env, demo_site_on_port, start_ews, stop  # noqa: E402

MIB = 1024 * 1024
GOAL_RSS_MIB = 450
GOAL_INSTALLED_MIB = 500
GOAL_READY_S = 5.0


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stack(root_pid: int) -> dict[int, str]:
    """pid -> name of ``root_pid`` and all its descendants (zombies left out)."""
    parent: dict[int, int] = {}
    words: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = [w.decode() for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z" or not cmd:
            continue
        parent[int(entry.name)] = int(ppid)
        words[int(entry.name)] = cmd
    found: dict[int, str] = {}
    for pid in parent:
        p = pid
        while p and p != root_pid:
            p = parent.get(p, 0)
        if p != root_pid:
            continue
        cmd = words[pid]
        if pid == root_pid:
            found[pid] = "ews up (supervisor)"
        elif "run" in cmd[:-1] and any("ews" in w for w in cmd[:3]):
            found[pid] = cmd[cmd.index("run") + 1]
        else:  # redis-server rewrites its command line to "redis-server host:port"
            found[pid] = Path(cmd[0].split()[0]).name
    return found


def sample(root_pid: int) -> dict[str, tuple[int, int]]:
    """name -> (RSS KiB, PSS KiB) of every process of the stack now."""
    out: dict[str, tuple[int, int]] = {}
    for pid, name in stack(root_pid).items():
        try:
            rss, pss = _status_kib(pid, "VmRSS"), _pss_kib(pid)
        except OSError:
            continue
        old = out.get(name, (0, 0))
        out[name] = (old[0] + rss, old[1] + pss)
    return out


def run_stack(seconds: float, history: bool) -> tuple[float, dict[str, tuple[int, int]], int, str]:
    """One fresh `ews up`: (seconds to /ready, per-process (RSS, PSS) KiB after ``seconds``, highest RSS sum
    KiB seen, the log's tail when it had a traceback)."""
    with tempfile.TemporaryDirectory(prefix="ews-bench-footprint-") as tmp:
        folder = Path(tmp)
        http_port = free_port()
        env = clean_env(
            EWS_DATA_DIR=str(folder / "data"),
            EWS_SITE_FILE=str(demo_site_on_port(folder, free_port())),
            EWS_SIMULATE="1",
            EWS_DEMO_HISTORY="1" if history else "0",
            EWS_HTTP_PORT=str(http_port),
            NATS_URL=f"nats://127.0.0.1:{free_port()}",
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        )
        base = f"http://127.0.0.1:{http_port}"
        log = folder / "ews-up.log"
        started = time.monotonic()
        proc = start_ews(["up"], env, log)
        try:
            with httpx.Client(base_url=base, timeout=2) as client:
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"`ews up` exited with {proc.returncode}:\n{tail(log)}")
                    try:
                        if client.get("/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() - started > START_TIMEOUT:
                        raise SystemExit(f"`ews up` not ready after {START_TIMEOUT:.0f} s:\n{tail(log)}")
                    time.sleep(0.05)
            ready = time.monotonic() - started
            print(f"  /ready after {ready:.2f} s; running {seconds:g} s…", file=sys.stderr, flush=True)
            end = time.monotonic() + seconds
            peak = 0
            while time.monotonic() < end:
                peak = max(peak, sum(r for r, _ in sample(proc.pid).values()))
                time.sleep(min(2.0, max(0.0, end - time.monotonic())))
            last = sample(proc.pid)
            peak = max(peak, sum(r for r, _ in last.values()))
        finally:
            stop(proc, signal.SIGINT, timeout=30)
        logged = log.read_text(errors="replace")
    return ready, last, peak, logged[-3000:] if "Traceback" in logged else ""


def installed_size() -> tuple[int, int, list[tuple[int, str]]]:
    """(bytes installed in a fresh runtime environment, bytes of its bytecode cache, [(bytes, distribution)]
    largest first)."""
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not on PATH: cannot build the runtime environment to measure it")
    with tempfile.TemporaryDirectory(prefix="ews-bench-runtime-env-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run(
            [
                uv,
                "sync",
                "--locked",
                "--no-dev",
                "--all-packages",
                "--link-mode",
                "copy",
                "--quiet",
                "--compile-bytecode",
                "--python",
                "python3.11",
            ],
            cwd=ROOT,
            env=dict(os.environ, UV_PROJECT_ENVIRONMENT=str(venv)),
            check=True,
        )
        total = bytecode = 0
        for folder, _dirs, files in os.walk(venv):
            for name in files:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    continue
                if name.endswith(".pyc"):
                    bytecode += os.lstat(path).st_size
                else:
                    total += os.lstat(path).st_size
        listing = subprocess.run(
            [str(venv / "bin" / "python"), "-c", _DIST_SIZES], capture_output=True, text=True, check=True
        )
        dists = [(int(size), name) for size, name in json.loads(listing.stdout)]
    return total, bytecode, sorted(dists, reverse=True)


_DIST_SIZES = """
import importlib.metadata as md, json, os
out = []
for d in md.distributions():
    size = 0
    for f in d.files or []:
        p = d.locate_file(f)
        if os.path.isfile(p) and not os.path.islink(p) and not str(p).endswith(".pyc"):
            size += os.path.getsize(p)
    out.append((size, f"{d.metadata['Name']} {d.version}"))
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks measured one after the other")
    parser.add_argument(
        "--seconds", type=float, default=60, help="running time after /ready before measuring"
    )
    parser.add_argument(
        "--no-history", action="store_true", help="EWS_DEMO_HISTORY=0 (make run publishes it)"
    )
    parser.add_argument("--no-install", action="store_true", help="skip (b), the installed environment")
    args = parser.parse_args()

    ok = True
    runs = []
    for n in range(1, args.runs + 1):
        print(f"run {n}/{args.runs}: starting `ews up`…", file=sys.stderr, flush=True)
        runs.append(run_stack(args.seconds, not args.no_history))
    readies = [r[0] for r in runs]
    sums = [sum(rss for rss, _ in r[1].values()) / 1024 for r in runs]
    pss_sums = [sum(pss for _, pss in r[1].values()) / 1024 for r in runs]
    peaks = [r[2] / 1024 for r in runs]
    names = sorted(
        {name for r in runs for name in r[1]},
        key=lambda k: -statistics.median(r[1].get(k, (0, 0))[0] for r in runs),
    )
    history = (
        "without the demo history"
        if args.no_history
        else "with the demo history being published (fresh folder, as `make run`)"
    )
    print(f"\n## Footprint: `ews up` of the demo site, {history}; {args.runs} run(s)\n")
    print(f"RSS (MiB) of each process {args.seconds:g} s after /ready, PSS in brackets:\n")
    print("| process | " + " | ".join(f"run {i}" for i in range(1, len(runs) + 1)) + " | median |")
    print("|---|" + "---:|" * (len(runs) + 1))
    for name in names:
        cells = [r[1].get(name, (0, 0)) for r in runs]
        med = statistics.median(c[0] for c in cells) / 1024
        print(
            f"| {name} | "
            + " | ".join(f"{c[0] / 1024:.0f} ({c[1] / 1024:.0f})" for c in cells)
            + f" | {med:.0f} |"
        )
    print(
        "| **all** | "
        + " | ".join(f"**{s:.0f}** ({p:.0f})" for s, p in zip(sums, pss_sums, strict=True))
        + f" | **{statistics.median(sums):.0f}** |"
    )
    print(
        "| highest sum during the minute | "
        + " | ".join(f"{p:.0f}" for p in peaks)
        + f" | {statistics.median(peaks):.0f} |"
    )
    print(
        "| `ews up` to /ready (s) | "
        + " | ".join(f"{r:.2f}" for r in readies)
        + f" | {statistics.median(readies):.2f} |"
    )
    rss_ok = statistics.median(sums) <= GOAL_RSS_MIB
    ready_ok = statistics.median(readies) <= GOAL_READY_S
    ok = ok and rss_ok and ready_ok
    print(
        f"\nmemory: **{statistics.median(sums):.0f} MiB RSS** summed over {len(names)} processes (median of "
        f"{len(runs)}; PSS {statistics.median(pss_sums):.0f}); target ≤ {GOAL_RSS_MIB} MiB"
        + ("" if rss_ok else " — MISSED")
    )
    print(
        f"start-up: **{statistics.median(readies):.2f} s** from `ews up` to GET /ready = 200 (median); "
        f"target ≤ {GOAL_READY_S:g} s" + ("" if ready_ok else " — MISSED")
    )
    if not args.no_install:
        total, bytecode, dists = installed_size()
        inst_ok = total / MIB <= GOAL_INSTALLED_MIB
        ok = ok and inst_ok
        print(
            f"installed: **{total / MIB:.0f} MiB** (`uv sync --locked --no-dev --all-packages` into an empty "
            f"virtual environment, {len(dists)} distributions; plus {bytecode / MIB:.0f} MiB of bytecode "
            f"compiled from them, {(total + bytecode) / MIB:.0f} MiB in all); target ≤ {GOAL_INSTALLED_MIB} MiB"
            + ("" if inst_ok else " — MISSED")
        )
        print("largest: " + ", ".join(f"{name} {size / MIB:.0f}" for size, name in dists[:8]))
    for n, r in enumerate(runs, 1):
        if r[3]:
            print(f"\nrun {n}: `ews up` log has a traceback:\n{r[3]}")
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
