"""Benchmark the service beside the reference seed: `python -m bench.run [--quick]` (see bench/README.md).

One command starts the stand-ins (Bedrock Runtime + Rekognition, moto's S3 server), the reference
seed and our service, drives the same load at both, checks every reported key is in its bucket,
prints a table and writes a JSON file under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import load, servers
from bench.procs import CpuMeter, MemorySampler, tree_memory_kib, tree_pids

RESULTS = servers.BENCH / "results"
SEED_TMP = Path("/tmp/ai_image_generator")
MIB = 1024
# Above this share of the machine's CPU used by unrelated processes during a phase, the table says so.
NOISY_SHARE = 0.10

TARGETS = {
    "p50_over_latency": 1.15,
    "cpu_less_than_seed": 8.0,
    "seed_cpu_ms_per_image": 330.0,  # the seed's published figure, used when the seed is not run
    "rps_vs_seed": 4.0,
    "burst_p50_over_latency": 1.25,
    "burst_peak_mib": 1024.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny load and short latencies (about 30 s): keeps the harness working, "
                             "its figures mean nothing")
    parser.add_argument("--latency", type=float, help="model latency (s) of the stand-in [1.0; quick 0.2]")
    parser.add_argument("--sequential", type=int, help="requests one at a time [10; quick 3]")
    parser.add_argument("--clients", type=int, help="closed-loop clients [20; quick 4]")
    parser.add_argument("--duration", type=float, help="seconds the closed loop starts requests [30; quick 3]")
    parser.add_argument("--requests", type=int,
                        help="closed loop: a fixed number of requests instead of --duration")
    parser.add_argument("--burst", type=int, help="simultaneous requests, ours only [100; quick 10]")
    parser.add_argument("--burst-latency", type=float, help="model latency (s) during the burst [20; quick 1]")
    parser.add_argument("--burst-seed", action="store_true", help="also send the burst to the seed")
    parser.add_argument("--phases", default="seq,loop,burst",
                        help="phases to run, comma-separated: seq (one at a time), loop (closed loop), burst")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured simultaneous requests first")
    parser.add_argument("--rekognition-latency", type=float, default=0.0,
                        help="seconds each DetectModerationLabels takes in the stand-in")
    parser.add_argument("--png-kind", choices=("noise", "flat"), default="noise",
                        help="stand-in PNGs: noise (~1.5 MB, realistic) or flat (tiny)")
    parser.add_argument("--only", choices=("both", "ours", "seed"), default="both",
                        help="which services to measure (ratios need both)")
    parser.add_argument("--seed-dir", type=Path, default=servers.DEFAULT_SEED_DIR,
                        help="the reference seed's folder")
    parser.add_argument("--seed-venv", type=Path, default=servers.DEFAULT_SEED_VENV,
                        help="the seed's own venv; made from bench/requirements-seed.txt when missing")
    parser.add_argument("--seed-optional", action="store_true",
                        help="when the seed cannot be set up or started, measure ours alone instead of failing")
    parser.add_argument("--repo", type=Path, default=servers.REPO,
                        help="the folder our service runs from (a private copy for code experiments)")
    parser.add_argument("--venv-bin", type=Path, default=Path(sys.executable).parent,
                        help="bin folder holding our gunicorn")
    parser.add_argument("--ours-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for our service (AIG_WORKERS=4, AIG_THREADS=32, ...); "
                             "AIG_* of the calling shell are passed too")
    parser.add_argument("--gunicorn-args", default="",
                        help="extra gunicorn arguments for ours, over its config file "
                             "(e.g. '-k gevent --worker-connections 1000')")
    parser.add_argument("--py-spy", action="store_true",
                        help="record ours' closed-loop phase with py-spy (raw collapsed stacks in the run folder; "
                             "summarise with `python -m bench.profile_summary FILE`)")
    parser.add_argument("--py-spy-args", default="--gil --rate 200",
                        help="py-spy record options: --gil samples only threads holding the GIL (Python CPU); "
                             "'--rate 200' alone also counts threads py-spy thinks active")
    parser.add_argument("--label", default="", help="a name for this run, kept in the JSON")
    parser.add_argument("--out", type=Path, help="JSON file to write [bench/results/bench-<time>.json]")
    parser.add_argument("--logs-dir", type=Path, default=RESULTS,
                        help="where the run folder with the servers' logs goes")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs even when all went well")
    args = parser.parse_args(argv)
    full = {"latency": 1.0, "sequential": 10, "clients": 20, "duration": 30.0, "burst": 100, "burst_latency": 20.0}
    quick = {"latency": 0.2, "sequential": 3, "clients": 4, "duration": 3.0, "burst": 10, "burst_latency": 1.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases <= {"seq", "loop", "burst"}:
        parser.error("--phases takes seq, loop and burst")
    for item in args.ours_env:
        if "=" not in item:
            parser.error(f"--ours-env wants NAME=VALUE, not {item!r}")
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Phase:
    """Measure one phase: CPU of the service and the stand-ins, peak memory, stand-in counters."""

    def __init__(self, service: servers.Server, infra: dict[str, servers.Server], standin_url: str):
        self.service = service
        self.infra = infra
        self.standin_url = standin_url

    def __enter__(self) -> Phase:
        # Zero the stand-in's counters (and its max-in-flight) so they describe this phase alone.
        servers.standin_call(self.standin_url, "/_standin/reset", {})
        self.memory = MemorySampler(self.service.pid, 0.1).__enter__()
        roots = {"service": self.service.pid} | {name: s.pid for name, s in self.infra.items()}
        self.cpu = CpuMeter(roots).__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu.__exit__(*exc)
        self.memory.__exit__(*exc)
        self.stats = servers.standin_call(self.standin_url, "/_standin/stats")

    def report(self, outcomes: list[load.Outcome], latency: float, wall: float | None = None) -> dict:
        summary = load.summarize(outcomes)
        images = summary["images"]
        wall = self.cpu.wall if wall is None else wall
        cpu = self.cpu.seconds
        summary.update({
            "model_latency_s": latency,
            "p50_over_latency": summary["latency_s"]["p50"] / latency,
            "wall_s": wall,
            "requests_per_s": summary["ok"] / wall if wall > 0 else float("nan"),
            "cpu_s": cpu,
            "cpu_ms_per_image": 1000 * cpu["service"] / images if images else float("nan"),
            "infra_cpu_ms_per_image": {k: 1000 * v / images if images else float("nan")
                                       for k, v in cpu.items() if k != "service"},
            "service_cpu_utilisation": cpu["service"] / self.cpu.wall if self.cpu.wall else float("nan"),
            "machine_busy_share": self.cpu.machine["busy"],
            "machine_steal_share": self.cpu.machine["steal"],
            "foreign_cpu_share": self.cpu.machine["foreign"],
            "load_generator_cpu_s": self.cpu.machine["load_generator_s"],
            "peak_pss_mib": self.memory.peak_pss_kib / MIB,
            "peak_rss_mib": self.memory.peak_rss_kib / MIB,
            "memory_samples": self.memory.samples,
            "standin": {k: self.stats.get(k) for k in ("invoke_calls", "images_generated", "max_in_flight",
                                                         "rekognition_calls", "rekognition_flagged",
                                                         "errors_returned", "rekognition_errors_returned")},
        })
        return summary


def set_latency(standin_url: str, latency: float) -> None:
    servers.standin_call(standin_url, "/_standin/config", {"latency": latency})


def measure(name: str, service: servers.Server, infra: dict[str, servers.Server], standin_url: str,
            args: argparse.Namespace, folder_root: str, run_dir: Path) -> tuple[dict, list[str]]:
    """Every phase against one service; returns its results and every key it reported."""
    target = load.Target(service.url, folder_root)
    results: dict = {"url": service.url}
    keys: list[str] = []
    timeout = 10 * args.latency + 60

    set_latency(standin_url, args.latency)
    log(f"{name}: warm-up ({args.warmup} simultaneous requests)")
    warm = load.burst(target, "warmup", args.warmup, timeout)
    keys += [k for o in warm for k in o.keys]
    results["warmup"] = load.summarize(warm)
    time.sleep(0.5)
    results["processes"] = len(tree_pids(service.pid))
    pss, rss = tree_memory_kib(service.pid)
    results["idle_pss_mib"], results["idle_rss_mib"] = pss / MIB, rss / MIB

    if "seq" in args.phases:
        log(f"{name}: {args.sequential} requests one at a time, model latency {args.latency:g} s")
        with Phase(service, infra, standin_url) as phase:
            set_latency(standin_url, args.latency)
            outcomes = load.sequential(target, "seq", args.sequential, timeout)
        results["sequential"] = phase.report(outcomes, args.latency)
        keys += [k for o in outcomes for k in o.keys]
        log(f"{name}: p50 {results['sequential']['latency_s']['p50']:.3f} s, "
            f"{results['sequential']['cpu_ms_per_image']:.1f} CPU ms/image")
    if "loop" in args.phases:
        keys += closed_loop_phase(name, service, infra, standin_url, args, target, results, run_dir, timeout)

    if "burst" in args.phases and args.burst > 0 and (name == "ours" or args.burst_seed):
        log(f"{name}: {args.burst} simultaneous requests, model latency {args.burst_latency:g} s")
        with Phase(service, infra, standin_url) as phase:
            set_latency(standin_url, args.burst_latency)
            outcomes = load.burst(target, "burst", args.burst, 3 * args.burst_latency + 120)
        set_latency(standin_url, args.latency)
        results["burst"] = phase.report(outcomes, args.burst_latency)
        results["burst"]["simultaneous"] = args.burst
        keys += [k for o in outcomes for k in o.keys]
        burst = results["burst"]
        log(f"{name}: p50 {burst['latency_s']['p50']:.2f} s, max {burst['latency_s']['max']:.2f} s, "
            f"{burst['errors']} errors, peak PSS {burst['peak_pss_mib']:.0f} MiB")
    return results, keys


def closed_loop_phase(name: str, service: servers.Server, infra: dict[str, servers.Server], standin_url: str,
                      args: argparse.Namespace, target: load.Target, results: dict, run_dir: Path,
                      timeout: float) -> list[str]:
    """The closed loop: `clients` clients for `duration` (or `requests`); records into results["closed_loop"]."""
    keys: list[str] = []
    how = f"{args.requests} requests" if args.requests else f"{args.duration:g} s"
    log(f"{name}: {args.clients} closed-loop clients for {how}")
    spy = None
    if args.py_spy and name == "ours":
        spy = start_py_spy(service, run_dir / f"{name}-closed-loop.pyspy.txt", args)
    with Phase(service, infra, standin_url) as phase:
        set_latency(standin_url, args.latency)
        outcomes, t0, t1 = load.closed_loop(target, "loop", args.clients, timeout,
                                            duration=None if args.requests else args.duration,
                                            requests_total=args.requests)
    if spy is not None:
        stop_py_spy(spy)
        results["py_spy_output"] = str(spy.args[spy.args.index("--output") + 1])
    results["closed_loop"] = phase.report(outcomes, args.latency, wall=t1 - t0)
    results["closed_loop"]["clients"] = args.clients
    keys += [k for o in outcomes for k in o.keys]
    loop = results["closed_loop"]
    log(f"{name}: {loop['requests_per_s']:.2f} requests/s, {loop['errors']} errors, "
        f"{loop['cpu_ms_per_image']:.1f} CPU ms/image")
    return keys


def start_py_spy(service: servers.Server, output: Path, args: argparse.Namespace) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("py-spy is not installed; no profile")
        return None
    duration = max(1, math.ceil(args.duration + 2 * args.latency + 2)) if not args.requests else 600
    command = [exe, "record", "--pid", str(service.pid), "--subprocesses", "--format", "raw",
               "--duration", str(duration), "--nonblocking", *shlex.split(args.py_spy_args), "--output", str(output)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(output.with_suffix(".log"), "wb"),
                            start_new_session=True)
    time.sleep(1.0)  # attaching takes a moment
    return proc


def stop_py_spy(proc: subprocess.Popen) -> None:
    try:
        proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_keys(s3_url: str, bucket: str, keys: list[str]) -> dict:
    """head_object every reported key; count the missing ones (lost) and the ones reported twice."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench",
                          config=Config(max_pool_connections=16, retries={"mode": "standard", "max_attempts": 3}))
    unique = sorted(set(keys))

    def exists(key: str) -> str:
        try:
            client.head_object(Bucket=bucket, Key=key)
            return "ok"
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            return "lost" if code in ("404", "NoSuchKey", "NotFound") else f"error {code}"

    with ThreadPoolExecutor(16) as pool:
        verdicts = list(pool.map(exists, unique))
    lost = [k for k, v in zip(unique, verdicts, strict=True) if v == "lost"]
    return {"reported": len(keys), "unique": len(unique), "duplicates": len(keys) - len(unique),
            "found": verdicts.count("ok"), "lost": len(lost), "lost_examples": lost[:5],
            "check_errors": sum(1 for v in verdicts if v.startswith("error"))}


def create_buckets(s3_url: str, names: list[str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
    for name in names:
        client.create_bucket(Bucket=name)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def _num(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _x(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def compare(results: dict) -> tuple[list[list[str]], dict]:
    """Table rows (figure, seed, ours, ours vs seed, target, verdict) and the ratios/verdicts as data."""
    seed, ours = results["services"].get("seed"), results["services"].get("ours")
    quick = results["config"]["quick"]
    rows: list[list[str]] = []
    verdicts: dict = {}

    def get(service, *path):
        value = service
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    def verdict(name: str, ok: bool | None) -> str:
        if ok is None:
            return "-"
        verdicts[name] = bool(ok)
        return "PASS" if ok else "FAIL"

    def ratio(a, b):
        if a is None or b is None or b == 0 or any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
            return None
        return a / b

    latency = results["config"]["latency_s"]
    s_p50, o_p50 = get(seed, "sequential", "p50_over_latency"), get(ours, "sequential", "p50_over_latency")
    r = ratio(o_p50, s_p50)
    rows.append([f"single request p50 / model latency ({latency:g} s)", _x(s_p50), _x(o_p50), _x(r),
                 f"<= {TARGETS['p50_over_latency']}x",
                 verdict("p50", None if o_p50 is None else o_p50 <= TARGETS["p50_over_latency"])])

    s_cpu1, o_cpu1 = get(seed, "sequential", "cpu_ms_per_image"), get(ours, "sequential", "cpu_ms_per_image")
    r1 = ratio(s_cpu1, o_cpu1)
    rows.append(["CPU ms per image, 1 client", _num(s_cpu1, ".1f"), _num(o_cpu1, ".1f"),
                 f"{r1:.1f}x less" if r1 else "-", "", ""])
    s_cpu, o_cpu = get(seed, "closed_loop", "cpu_ms_per_image"), get(ours, "closed_loop", "cpu_ms_per_image")
    r2 = ratio(s_cpu, o_cpu)
    reference = s_cpu if s_cpu is not None else TARGETS["seed_cpu_ms_per_image"]
    ok = None if o_cpu is None else reference / o_cpu >= TARGETS["cpu_less_than_seed"]
    rows.append([f"CPU ms per image, {results['config']['clients']} clients", _num(s_cpu, ".1f"),
                 _num(o_cpu, ".1f"), f"{r2:.1f}x less" if r2 else "-",
                 f">= {TARGETS['cpu_less_than_seed']:g}x less", verdict("cpu", ok)])

    s_rps, o_rps = get(seed, "closed_loop", "requests_per_s"), get(ours, "closed_loop", "requests_per_s")
    s_err, o_err = get(seed, "closed_loop", "errors"), get(ours, "closed_loop", "errors")
    r3 = ratio(o_rps, s_rps)
    ok = None if o_rps is None or r3 is None else (r3 >= TARGETS["rps_vs_seed"] and o_err == 0)
    rows.append([f"requests/s at {results['config']['clients']} clients (errors)",
                 f"{_num(s_rps, '.2f')} ({_num(s_err, 'd')})", f"{_num(o_rps, '.2f')} ({_num(o_err, 'd')})",
                 f"{r3:.1f}x" if r3 else "-", f">= {TARGETS['rps_vs_seed']:g}x, 0 errors", verdict("rps", ok)])

    burst_n = results["config"]["burst"]
    b_lat = results["config"]["burst_latency_s"]
    s_b, o_b = get(seed, "burst"), get(ours, "burst")
    if o_b is not None or s_b is not None:
        o_p = get(o_b, "p50_over_latency")
        s_p = get(s_b, "p50_over_latency")
        o_bad = get(o_b, "errors")
        ok = None if o_b is None else (o_bad == 0 and o_p <= TARGETS["burst_p50_over_latency"])
        rows.append([f"{burst_n} simultaneous at {b_lat:g} s: p50 / latency (errors)",
                     f"{_x(s_p)} ({_num(get(s_b, 'errors'), 'd')})" if s_b else "-",
                     f"{_x(o_p)} ({_num(o_bad, 'd')})" if o_b else "-", _x(ratio(o_p, s_p)),
                     f"<= {TARGETS['burst_p50_over_latency']}x, all 200", verdict("burst", ok)])
        o_max, s_max = get(o_b, "latency_s", "max"), get(s_b, "latency_s", "max")
        rows.append([f"{burst_n} simultaneous: max latency s", _num(s_max, ".1f"), _num(o_max, ".1f"),
                     "", "", ""])
        o_mem, s_mem = get(o_b, "peak_pss_mib"), get(s_b, "peak_pss_mib")
        ok = None if o_mem is None else o_mem <= TARGETS["burst_peak_mib"]
        rows.append([f"{burst_n} simultaneous: peak PSS of the tree, MiB", _num(s_mem, ".0f"), _num(o_mem, ".0f"),
                     f"{ratio(o_mem, s_mem):.2f}x" if ratio(o_mem, s_mem) else "-",
                     f"<= {TARGETS['burst_peak_mib']:.0f}", verdict("memory", ok)])

    s_idle, o_idle = get(seed, "idle_pss_mib"), get(ours, "idle_pss_mib")
    rows.append(["idle PSS of the tree, MiB (processes)",
                 f"{_num(s_idle, '.0f')} ({_num(get(seed, 'processes'), 'd')})" if seed else "-",
                 f"{_num(o_idle, '.0f')} ({_num(get(ours, 'processes'), 'd')})" if ours else "-", "", "", ""])

    s_keys, o_keys = get(seed, "keys"), get(ours, "keys")

    def keys_cell(k):
        if k is None:
            return "-"
        extra = f", {k['duplicates']} dup" if k["duplicates"] else ""
        return f"{k['lost']} of {k['unique']}{extra}"

    ok = None if o_keys is None else o_keys["lost"] == 0 and o_keys["check_errors"] == 0
    rows.append(["lost keys (head_object on every reported key)", keys_cell(s_keys), keys_cell(o_keys), "", "0",
                 verdict("keys", ok)])
    if quick:
        for row in rows:
            row[5] = "(quick)" if row[5] else ""
    return rows, verdicts


def render(rows: list[list[str]]) -> str:
    header = ["figure", "seed", "ours", "ours vs seed", "target", ""]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
    args.logs_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{stamp}-", dir=args.logs_dir))
    out_path = args.out or RESULTS / f"bench-{stamp}.json"
    wanted = ["seed", "ours"] if args.only == "both" else [args.only]
    extra_env = dict(item.split("=", 1) for item in args.ours_env)
    buckets = {"seed": f"bench-seed-{run_id}".lower()[:63], "ours": f"bench-ours-{run_id}".lower()[:63]}
    folder_root = f"bench-{run_id}"
    results: dict = {
        "label": args.label,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "revision": git_revision(args.repo),
        "config": {"quick": args.quick, "latency_s": args.latency, "sequential": args.sequential,
                   "clients": args.clients, "duration_s": None if args.requests else args.duration,
                   "requests": args.requests, "burst": args.burst, "burst_latency_s": args.burst_latency,
                   "png_kind": args.png_kind, "rekognition_latency_s": args.rekognition_latency,
                   "repo": str(args.repo), "gunicorn_args": args.gunicorn_args, "ours_env": extra_env},
        "services": {},
        "targets": TARGETS,
    }
    started: list[servers.Server] = []
    failed = False
    t_start = time.monotonic()
    try:
        log(f"logs in {run_dir}")
        standin = servers.start_standin(run_dir, args.latency, args.png_kind, args.rekognition_latency)
        started.append(standin)
        moto = servers.start_moto(run_dir)
        started.append(moto)
        create_buckets(moto.url, [buckets[name] for name in wanted])
        log(f"stand-in at {standin.url}, moto S3 at {moto.url}")
        infra = {"standin": standin, "moto": moto}
        services: dict[str, servers.Server] = {}
        if "seed" in wanted:
            try:
                venv = servers.ensure_seed_venv(args.seed_venv, log)
                services["seed"] = servers.start_seed(args.seed_dir, venv, run_dir, buckets["seed"], standin.url,
                                                      moto.url)
                started.append(services["seed"])
            except (OSError, subprocess.CalledProcessError, servers.StartError) as error:
                if not args.seed_optional:
                    raise
                log(f"the reference seed could not be set up or started ({error}); measuring ours alone")
                results["seed_skipped"] = str(error)[:2000]
                wanted.remove("seed")
        if "ours" in wanted:
            services["ours"] = servers.start_ours(args.repo, args.venv_bin, run_dir, buckets["ours"], standin.url,
                                                  moto.url, extra_env, args.gunicorn_args)
            started.append(services["ours"])
            results["config"]["ours_effective_env"] = services["ours"].extra["env"]
        log("services up: " + ", ".join(f"{n} {s.url}" for n, s in services.items()))
        for name in wanted:
            service_results, keys = measure(name, services[name], infra, standin.url, args,
                                            f"{folder_root}/{name}", run_dir)
            log(f"{name}: checking {len(keys)} reported keys in bucket {buckets[name]}")
            service_results["keys"] = check_keys(moto.url, buckets[name], keys)
            results["services"][name] = service_results
    except Exception:
        failed = True
        raise
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(SEED_TMP / folder_root, ignore_errors=True)
        results["duration_s"] = round(time.monotonic() - t_start, 1)
        if results["services"]:
            rows, verdicts = compare(results)
            results["table"] = rows
            results["verdicts"] = verdicts
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
            if args.out is None:
                shutil.copyfile(out_path, RESULTS / "latest.json")
            print(render(rows))
            noisy = sorted({f"{name}/{phase} {data[phase]['foreign_cpu_share']:.0%}"
                            for name, data in results["services"].items()
                            for phase in ("sequential", "closed_loop", "burst")
                            if data.get(phase, {}).get("foreign_cpu_share", 0) > NOISY_SHARE})
            if noisy:
                print("\nwarning: other processes on this machine used CPU during " + ", ".join(noisy)
                      + " of its capacity; re-take the figures on a quiet machine")
            if results.get("seed_skipped"):
                print(f"\nthe reference seed was skipped: {results['seed_skipped'].splitlines()[0]}")
            print(f"\n{'quick run: figures are not comparable to the targets; ' if args.quick else ''}"
                  f"{results['duration_s']:g} s; JSON: {out_path}")
        if failed or args.keep_logs or args.py_spy:
            log(f"logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    lost = sum(s["keys"]["lost"] for s in results["services"].values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
