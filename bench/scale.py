"""Scale out: `python -m bench.scale [--quick]` (see bench/README.md, "bench.scale").

Phase A (sync): nginx with the repo's site in front of several instances of our service; hundreds
of simultaneous POST /generate_images at a long model latency. Phase B (jobs): the same instances
with AWS-mode jobs (SQS + DynamoDB on moto) and `python -m jobs.worker` processes draining a
thousand POST /jobs. Prints a table, writes a JSON file under bench/results/, exits 1 when a
correctness check fails (a non-200, a lost key, a job not succeeded, a model call paid twice).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import load, servers
from bench.procs import CpuMeter
from bench.run import check_keys, create_buckets, git_revision, machine, set_latency

RESULTS = servers.BENCH / "results"
NGINX_SITE = servers.REPO / "deploy" / "nginx" / "ai-image-generator.conf"
# The site's flood guard on the paid routes (raised in the bench's copy: every request comes from one address).
LIMIT_REQ = re.compile(r"limit_req zone=aig_generate burst=(\d+) nodelay;")
TERMINAL = {"succeeded", "partial", "failed", "cancelled", "expired"}
ACCESS_LOGGER = "ai_image_generator.access"

TARGETS = {"sync_p50_over_latency": 1.3}

FULL = {"burst": 300, "burst_latency": 20.0, "jobs": 1000, "job_latency": 1.0}
QUICK = {"burst": 30, "burst_latency": 1.0, "jobs": 50, "job_latency": 0.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny load, short latencies (about a minute): keeps the harness working, "
                             "its figures mean nothing")
    parser.add_argument("--phases", default="sync,jobs", help="phases to run: sync, jobs")
    parser.add_argument("--instances", type=int, default=3, help="web instances behind nginx")
    parser.add_argument("--burst", type=int, help="sync: simultaneous POST /generate_images [300; quick 30]")
    parser.add_argument("--burst-latency", type=float, help="sync: model latency (s) [20; quick 1]")
    parser.add_argument("--jobs", type=int, help="jobs: POST /jobs to drain [1000; quick 50]")
    parser.add_argument("--job-latency", type=float, help="jobs: model latency (s) [1; quick 0.2]")
    parser.add_argument("--workers", type=int, default=3, help="jobs: `python -m jobs.worker` processes")
    parser.add_argument("--worker-jobs", type=int, default=32, help="jobs: AIG_WORKER_JOBS, jobs per worker")
    parser.add_argument("--clients", type=int, default=32, help="jobs: client threads submitting")
    parser.add_argument("--drain-timeout", type=float, help="jobs: seconds to wait for every job to end "
                                                            "[max(300, 30x the ideal drain)]")
    parser.add_argument("--label", default="", help="a name for this run, kept in the JSON")
    parser.add_argument("--out", type=Path, help="JSON file to write [bench/results/scale-<time>.json]")
    parser.add_argument("--logs-dir", type=Path, default=RESULTS, help="where the run folder with the logs goes")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs even when all went well")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not args.phases or not args.phases <= {"sync", "jobs"}:
        parser.error("--phases takes sync and jobs")
    for name in ("instances", "workers", "worker_jobs", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# nginx: the repo's site on loopback, one upstream line per instance
# ------------------------------------------------------------------------------------------------


def nginx_site(text: str, *, port: int, upstream_ports: list[int], log_dir: Path, burst: int) -> tuple[str, list]:
    """The site with loopback ports, one upstream line per instance, logs in log_dir; and what was overridden.

    The site's rate limit (60/min per address, burst 20, nodelay) would answer most of the bench's
    load 429: every request comes from 127.0.0.1. Its burst is raised to `burst` in this copy only.
    """
    from tests.servers import rewrite_site  # the bench runs in the dev venv, where pytest is

    out = rewrite_site(text, nginx_port=port, log_dir=log_dir, upstream_ports=upstream_ports)
    shipped = sorted({int(b) for b in LIMIT_REQ.findall(out)})
    out, limited = LIMIT_REQ.subn(f"limit_req zone=aig_generate burst={burst} nodelay;", out)
    overrides = []
    if limited:
        overrides.append(f"limit_req burst {'/'.join(map(str, shipped))} -> {burst} on {limited} paid routes "
                         f"(the shipped 60/min per address, burst 20, would answer 429 to all but ~21 of the "
                         f"bench's requests, which all come from 127.0.0.1)")
    return out, overrides


def nginx_conf(site_text: str, workdir: Path, connections: int) -> Path:
    """The tests' minimal nginx.conf around the site, with room for the bench's connections."""
    from tests.servers import write_nginx_conf  # the bench runs in the dev venv, where pytest is

    return write_nginx_conf(site_text, workdir, connections, error_level="warn")


def find_nginx() -> str:
    """nginx's path: on PATH or in an sbin folder (Debian's is /usr/sbin/nginx)."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise servers.StartError("nginx is not installed (looked on PATH and in the sbin folders)")


def start_nginx(run_dir: Path, upstream_ports: list[int], args: argparse.Namespace) -> servers.Server:
    """nginx in the foreground, in its own session, on a free loopback port; returns once /healthz answers."""
    workdir = run_dir / "nginx"
    port = servers.free_port()
    # Every paid POST of the run, with room: the zone is shared by both phases.
    burst = args.instances * 4 + args.burst + args.jobs + 100
    site, overrides = nginx_site(NGINX_SITE.read_text(), port=port, upstream_ports=upstream_ports,
                                 log_dir=workdir / "logs", burst=burst)
    # Each client holds two connections (caller -> nginx, nginx -> gunicorn); the tests' 256 holds 128 clients.
    connections = max(1024, 2 * max(args.burst, args.clients) + 256)
    overrides.append(f"worker_connections {connections} (1 worker process): each of the {args.burst} "
                     f"simultaneous clients holds 2 connections")
    conf = nginx_conf(site, workdir, connections)
    command = [find_nginx(), "-p", f"{workdir}/", "-c", str(conf), "-e", f"{workdir}/logs/error.log"]
    server = servers._spawn("nginx", command, workdir, servers.base_env(), workdir / "logs" / "nginx.out")
    server.url = f"http://127.0.0.1:{port}"
    server.extra["overrides"] = overrides
    server.extra["error_log"] = workdir / "logs" / "error.log"
    servers._wait_http(server, server.url + "/healthz", 20)
    return server


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def service_env(bucket: str, standin_url: str, moto_url: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment bench/servers.start_ours gives the web, for a worker (no AIG_BIND)."""
    env = servers.base_env(keep_aig=True)
    env.update({
        "AIG_MODEL": "bedrock", "AIG_STORE": "s3", "AIG_S3_BUCKET": bucket, "AIG_MODERATION": "rekognition",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": standin_url, "AWS_ENDPOINT_URL_BEDROCK": standin_url,
        "AWS_ENDPOINT_URL_REKOGNITION": standin_url, "AWS_ENDPOINT_URL_S3": moto_url,
    })
    env.update(extra)
    return env


def start_instances(args: argparse.Namespace, run_dir: Path, bucket: str, standin_url: str, moto_url: str,
                    extra_env: dict[str, str], started: list[servers.Server]) -> list[servers.Server]:
    """`args.instances` web instances, started at once, each logging to run_dir/web<N>/ours.log."""
    folders = []
    for i in range(args.instances):
        folders.append(run_dir / f"web{i + 1}")
        folders[-1].mkdir()
    venv_bin = Path(sys.executable).parent
    with ThreadPoolExecutor(len(folders)) as pool:
        futures = [pool.submit(servers.start_ours, servers.REPO, venv_bin, folder, bucket, standin_url, moto_url,
                               extra_env, "") for folder in folders]
    instances, errors = [], []
    for future in futures:
        try:
            instances.append(future.result())
        except Exception as error:  # noqa: BLE001 - the others still have to be stopped
            errors.append(error)
    started.extend(instances)
    if errors:
        raise errors[0]
    for i, instance in enumerate(instances):
        instance.name = f"web{i + 1}"
    return instances


def start_workers(count: int, env: dict[str, str], run_dir: Path, started: list[servers.Server]) -> list:
    """`count` job workers (`python -m jobs.worker`); returns once each says it polls the queue."""
    workers = []
    for i in range(count):
        worker = servers._spawn(f"worker{i + 1}", [sys.executable, "-m", "jobs.worker"], servers.REPO, env,
                                run_dir / f"worker{i + 1}.log")
        started.append(worker)
        workers.append(worker)
    deadline = time.monotonic() + 60
    for worker in workers:
        while "job slots on the" not in worker.log_path.read_text(errors="replace"):
            if worker.proc.poll() is not None:
                raise servers.StartError(f"{worker.name} exited with {worker.proc.returncode}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise servers.StartError(f"{worker.name} did not start polling within 60 s:\n{worker.tail()}")
            time.sleep(0.2)
    return workers


def stop_all(group: list[servers.Server]) -> None:
    """SIGTERM every process of the group at once (workers finish a long poll each), then wait for each."""
    for server in group:
        if server.proc.poll() is None:
            try:
                server.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    for server in reversed(group):
        server.stop()


def aws_clients(moto_url: str):
    """SQS and DynamoDB clients on moto, for the bench itself (creating the resources, polling the table)."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 3})
    common = {"region_name": "us-east-1", "aws_access_key_id": "bench", "aws_secret_access_key": "bench",
              "config": config}
    return boto3.client("sqs", endpoint_url=moto_url, **common), \
        boto3.client("dynamodb", endpoint_url=moto_url, **common)


# ------------------------------------------------------------------------------------------------
# What the instances' own logs say
# ------------------------------------------------------------------------------------------------


def access_lines(instance: servers.Server, path_prefix: str, since: float, until: float) -> list[dict]:
    """The app's access lines for paths starting with path_prefix, answered between since and until (epoch)."""
    lines = []
    for raw in instance.log_path.read_text(errors="replace").splitlines():
        if ACCESS_LOGGER not in raw:
            continue
        try:
            entry = json.loads(raw)
            end = dt.datetime.fromisoformat(entry["time"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("logger") == ACCESS_LOGGER and str(entry.get("path", "")).startswith(path_prefix) \
                and since <= end <= until:
            lines.append({"start": end - float(entry.get("duration_ms") or 0) / 1000, "end": end,
                          "status": entry.get("status"), "pid": entry.get("pid")})
    return lines


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def spread(instances: list[servers.Server], path_prefix: str, since: float, until: float,
           late_after: float = math.inf) -> dict:
    """Requests each instance (and each of its gunicorn workers) answered, peaks in flight, instances busy at once.

    `started_late` counts requests the app began more than `late_after` seconds after the first one
    of the window: in a burst (arrivals spread over a second or two), with half the model latency,
    those waited in a gunicorn worker for a free thread.
    """
    per = {}
    events = []
    everything = []
    for instance in instances:
        lines = access_lines(instance, path_prefix, since, until)
        everything += lines
        processes = {}
        for pid in sorted({x["pid"] for x in lines}, key=str):
            mine = [(x["start"], x["end"]) for x in lines if x["pid"] == pid]
            processes[str(pid)] = {"answered": len(mine), "peak_in_flight": peak_overlap(mine)}
        per[instance.name] = {"answered": len(lines), "statuses": dict(Counter(str(x["status"]) for x in lines)),
                              "peak_in_flight": peak_overlap([(x["start"], x["end"]) for x in lines]),
                              "processes": processes}
        events += [(x["start"], 1, instance.name) for x in lines] + [(x["end"], -1, instance.name) for x in lines]
    # The most instances that each had at least one request in flight at the same instant.
    in_flight: Counter = Counter()
    busy_at_once = 0
    for _, step, name in sorted(events, key=lambda e: (e[0], e[1])):
        in_flight[name] += step
        busy_at_once = max(busy_at_once, sum(1 for n in in_flight.values() if n > 0))
    first = min((x["start"] for x in everything), default=0.0)
    return {"instances": per, "instances_busy_at_once": busy_at_once,
            "started_late": sum(1 for x in everything if x["start"] - first > late_after)}


def log_findings(server: servers.Server, limit: int = 8) -> dict:
    """WARNING kinds (counted) and ERROR lines (and tracebacks) of a process's log."""
    warnings: Counter = Counter()
    errors = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if '"level": "WARNING"' in line:
            try:
                warnings[json.loads(line)["message"][:90]] += 1
            except (ValueError, KeyError, TypeError):
                warnings[line[:90]] += 1
        elif '"level": "ERROR"' in line or '"level": "CRITICAL"' in line or line.startswith("Traceback"):
            errors.append(line[:600])
    return {"errors": len(errors), "first_errors": errors[:limit], "warnings": dict(warnings.most_common(limit))}


def pool_full(findings: dict) -> int:
    """urllib3's 'Connection pool is full' warnings in log_findings' output."""
    return sum(n for message, n in findings["warnings"].items() if message.startswith("Connection pool is full"))


# ------------------------------------------------------------------------------------------------
# Phase A: sync through nginx
# ------------------------------------------------------------------------------------------------


class OneImageTarget(load.Target):
    """POST /generate_images asking for one image, each request in a folder of its own."""

    def body(self, phase: str) -> dict:
        return {**super().body(phase), "count": 1}


def phase_sync(args, nginx, instances, infra, folder_root: str, moto_url: str, bucket: str) -> dict:
    """Phase A: a warm-up, then `args.burst` simultaneous one-image requests through nginx; its results."""
    standin_url = infra["standin"].url
    target = OneImageTarget(nginx.url, folder_root)
    warm = args.instances * 4
    log(f"sync: warm-up, {warm} simultaneous requests through nginx at 0.2 s")
    set_latency(standin_url, 0.2)
    warm_outcomes = load.burst(target, "warmup", warm, 60)
    time.sleep(0.5)
    servers.standin_call(standin_url, "/_standin/reset", {})
    set_latency(standin_url, args.burst_latency)
    log(f"sync: {args.burst} simultaneous POST /generate_images (count 1) through nginx to {args.instances} "
        f"instances, model latency {args.burst_latency:g} s")
    roots = {i.name: i.pid for i in instances} | {"nginx": nginx.pid} | {k: s.pid for k, s in infra.items()}
    since = time.time()
    with CpuMeter(roots) as cpu:
        outcomes = load.burst(target, "burst", args.burst, 3 * args.burst_latency + 120)
    until = time.time() + 1
    stats = servers.standin_call(standin_url, "/_standin/stats")
    summary = load.summarize(outcomes)
    latencies = sorted(o.latency for o in outcomes if o.ok)
    summary["latency_s"]["p95"] = load.percentile(latencies, 95)
    summary["statuses"] = dict(Counter(str(o.status) for o in outcomes))
    summary["model_latency_s"] = args.burst_latency
    summary["p50_over_latency"] = summary["latency_s"]["p50"] / args.burst_latency
    summary["spread"] = spread(instances, "/generate_images", since, until, late_after=args.burst_latency / 2)
    summary["warmup"] = load.summarize(warm_outcomes)
    summary["standin"] = {k: stats.get(k) for k in ("invoke_calls", "images_generated", "max_in_flight",
                                                     "rekognition_calls", "errors_returned")}
    summary.update(cpu_report(cpu, max(1, summary["ok"]), [i.name for i in instances], []))
    keys = [k for o in outcomes for k in o.keys]
    log(f"sync: checking {len(keys)} reported keys in bucket {bucket}")
    summary["keys"] = check_keys(moto_url, bucket, keys)
    s = summary
    log(f"sync: p50 {s['latency_s']['p50']:.2f} s, max {s['latency_s']['max']:.2f} s, statuses {s['statuses']}, "
        f"per instance {[v['answered'] for v in s['spread']['instances'].values()]}")
    return summary


def cpu_report(cpu: CpuMeter, units: int, web: list[str], workers: list[str]) -> dict:
    """CPU seconds of each tree and ms per unit (request or job) for the web, the workers and the rest."""
    seconds = cpu.seconds
    groups = {"web": sum(seconds[n] for n in web), "workers": sum(seconds[n] for n in workers),
              **{k: v for k, v in seconds.items() if k not in web and k not in workers}}
    if not workers:
        groups.pop("workers")
    bench = cpu.machine["load_generator_s"]
    total = sum(groups.values()) + bench
    return {"cpu_s": seconds, "wall_s": cpu.wall,
            "cpu_ms_per_unit": {k: 1000 * v / units for k, v in groups.items()} | {"bench": 1000 * bench / units},
            "cpu_ms_per_unit_total": 1000 * total / units,
            "machine_busy_share": cpu.machine["busy"], "foreign_cpu_share": cpu.machine["foreign"]}


# ------------------------------------------------------------------------------------------------
# Phase B: queued jobs
# ------------------------------------------------------------------------------------------------


def submit_jobs(url: str, folder_root: str, count: int, clients: int) -> list[dict]:
    """POST /jobs `count` times from `clients` threads, each with its own keep-alive session."""
    counter = itertools.count()
    results: list[dict] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while (n := next(counter)) < count:
                body = {"prompt": load.PROMPT, "output_folder": f"{folder_root}/jobs/j{n:05d}",
                        "file_name_prefix": "bench_job", "count": 1}
                start_epoch, start = time.time(), time.monotonic()
                entry = {"n": n, "start_epoch": start_epoch, "status": 0, "job_id": None, "error": ""}
                try:
                    answer = session.post(url + "/jobs", json=body, timeout=60)
                    entry["status"] = answer.status_code
                    if answer.status_code == 202:
                        entry["job_id"] = answer.json()["job_id"]
                    else:
                        entry["error"] = answer.text[:200]
                except (requests.RequestException, ValueError, KeyError) as error:
                    entry["error"] = type(error).__name__
                entry["latency"] = time.monotonic() - start
                entry["end_epoch"] = start_epoch + entry["latency"]
                with lock:
                    results.append(entry)

    threads = [threading.Thread(target=client, name=f"submit-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(results, key=lambda e: e["n"])


def read_jobs(dynamodb, table: str, job_ids: list[str]) -> dict[str, dict]:
    """The jobs' states and times straight from DynamoDB (BatchGetItem, 100 a call, strongly consistent)."""
    from boto3.dynamodb.types import TypeDeserializer

    plain = TypeDeserializer().deserialize
    found: dict[str, dict] = {}
    for i in range(0, len(job_ids), 100):
        request = {table: {"Keys": [{"job_id": {"S": j}} for j in job_ids[i:i + 100]], "ConsistentRead": True,
                           "ProjectionExpression": "job_id, #s, #w, attempts, created_at, started_at, finished_at",
                           "ExpressionAttributeNames": {"#s": "state", "#w": "worker"}}}
        while request:
            answer = dynamodb.batch_get_item(RequestItems=request)
            for item in answer["Responses"].get(table, []):
                doc = {k: plain(v) for k, v in item.items()}
                found[doc["job_id"]] = {k: float(v) if k.endswith("_at") or k == "attempts" else v
                                        for k, v in doc.items()}
            request = answer.get("UnprocessedKeys") or None
    return found


def wait_drained(dynamodb, table: str, job_ids: list[str], timeout: float) -> tuple[dict[str, dict], bool]:
    """Poll the table (only for jobs not yet ended) until every job ended or `timeout`; (jobs, all ended)."""
    jobs: dict[str, dict] = {}
    pending = list(job_ids)
    give_up = time.monotonic() + timeout
    last_log = time.monotonic()
    while pending:
        jobs.update(read_jobs(dynamodb, table, pending))
        pending = [j for j in pending if jobs.get(j, {}).get("state") not in TERMINAL]
        if not pending:
            break
        if time.monotonic() > give_up:
            return jobs, False
        if time.monotonic() - last_log > 10:
            last_log = time.monotonic()
            log(f"jobs: {len(job_ids) - len(pending)} of {len(job_ids)} ended; states of the rest "
                f"{dict(Counter(jobs.get(j, {}).get('state', 'missing') for j in pending))}")
        time.sleep(1.0)
    return jobs, True


def read_through_api(url: str, job_ids: list[str], clients: int) -> dict[str, dict]:
    """GET /jobs/<id> through nginx for every job: status, state and the manifest's keys."""
    local = threading.local()

    def one(job_id: str) -> tuple[str, dict]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        try:
            answer = local.session.get(f"{url}/jobs/{job_id}", timeout=30)
            view = answer.json() if answer.status_code == 200 else {}
        except (requests.RequestException, ValueError) as error:
            return job_id, {"status": 0, "state": None, "keys": [], "error": type(error).__name__}
        manifest = view.get("manifest") or {}
        return job_id, {"status": answer.status_code, "state": view.get("state"),
                        "keys": [k for k in manifest.get("images", []) if isinstance(k, str)],
                        "error": view.get("error")}

    with ThreadPoolExecutor(clients) as pool:
        return dict(pool.map(one, job_ids))


def queue_depth(sqs, queue_url: str) -> int:
    """Messages in a queue: visible, in flight and delayed."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return sum(int(v) for v in attributes.values())


def phase_jobs(args, nginx, instances, infra, resources: dict, worker_env: dict, run_dir: Path,
               folder_root: str, moto_url: str, bucket: str, started: list[servers.Server]) -> dict:
    """Phase B: start the workers, submit `args.jobs` jobs through nginx, wait for them to end, check; its results."""
    standin_url = infra["standin"].url
    sqs, dynamodb = aws_clients(moto_url)
    log(f"jobs: starting {args.workers} workers with {args.worker_jobs} job slots each")
    workers = start_workers(args.workers, worker_env, run_dir, started)
    servers.standin_call(standin_url, "/_standin/reset", {})
    set_latency(standin_url, args.job_latency)
    slots = args.workers * args.worker_jobs
    ideal_drain = math.ceil(args.jobs / slots) * args.job_latency
    timeout = args.drain_timeout or max(300.0, 30 * ideal_drain)
    log(f"jobs: {args.jobs} POST /jobs (count 1) through nginx from {args.clients} client threads, model latency "
        f"{args.job_latency:g} s")
    roots = {i.name: i.pid for i in instances} | {w.name: w.pid for w in workers} | {"nginx": nginx.pid} \
        | {k: s.pid for k, s in infra.items()}
    with CpuMeter(roots) as cpu:
        submits = submit_jobs(nginx.url, folder_root, args.jobs, args.clients)
        job_ids = [s["job_id"] for s in submits if s["job_id"]]
        first, last = min(s["start_epoch"] for s in submits), max(s["end_epoch"] for s in submits)
        log(f"jobs: {len(job_ids)} accepted in {last - first:.1f} s; waiting for them to end (polling DynamoDB)")
        jobs, drained = wait_drained(dynamodb, resources["table"], job_ids, timeout)
    stats = servers.standin_call(standin_url, "/_standin/stats")
    states = Counter(jobs.get(j, {}).get("state", "missing") for j in job_ids)
    ended = [jobs[j] for j in job_ids if jobs.get(j, {}).get("state") in TERMINAL]
    last_end = max((j["finished_at"] for j in ended if j.get("finished_at")), default=float("nan"))
    drain = last_end - first
    ran = [j for j in ended if j.get("started_at") and j.get("finished_at")]
    waits = [j["started_at"] - j["created_at"] for j in ran if j.get("created_at")]
    runs = [j["finished_at"] - j["started_at"] for j in ran]
    log(f"jobs: {dict(states)}; reading each through GET /jobs/<id>")
    api = read_through_api(nginx.url, job_ids, args.clients)
    keys = [k for view in api.values() for k in view["keys"]]
    log(f"jobs: checking {len(keys)} reported keys in bucket {bucket}")
    key_check = check_keys(moto_url, bucket, keys)
    names = {str(w.pid): w.name for w in workers}
    api_bad = {j: v for j, v in api.items() if v["status"] != 200 or v["state"] != "succeeded" or not v["keys"]}
    not_succeeded = (args.jobs - len(job_ids)) + sum(n for s, n in states.items() if s != "succeeded")
    latencies = sorted(s["latency"] for s in submits if s["job_id"])
    result = {
        "jobs": args.jobs, "accepted": len(job_ids),
        "submit_statuses": dict(Counter(str(s["status"]) for s in submits)),
        "submit_errors": [s["error"] for s in submits if not s["job_id"]][:5],
        "submit_s": last - first, "submit_per_s": len(job_ids) / (last - first) if last > first else float("nan"),
        "submit_latency_s": {"p50": load.percentile(latencies, 50), "p95": load.percentile(latencies, 95),
                             "max": load.percentile(latencies, 100)},
        "drained": drained, "drain_s": drain, "after_last_submit_s": last_end - last,
        "jobs_per_s": len(ended) / drain if drain > 0 else float("nan"),
        "ideal_jobs_per_s": slots / args.job_latency, "slots": slots, "model_latency_s": args.job_latency,
        "states": dict(states), "not_succeeded": not_succeeded,
        "attempts_over_1": sum(1 for j in ended if j.get("attempts", 1) > 1),
        "queue_wait_s": {"p50": load.percentile(sorted(waits), 50), "max": load.percentile(sorted(waits), 100)},
        "run_s": {"p50": load.percentile(sorted(runs), 50), "p95": load.percentile(sorted(runs), 95),
                  "max": load.percentile(sorted(runs), 100)},
        "peak_running": peak_overlap([(j["started_at"], j["finished_at"]) for j in ran]),
        # A worker's id in the table is host:pid:random.
        "per_worker": dict(Counter(names.get((str(j.get("worker", "")).split(":") + ["", ""])[1], "?")
                                   for j in ended)),
        "api": {"read": len(api), "bad": len(api_bad), "bad_examples": dict(list(api_bad.items())[:3])},
        "keys": key_check, "lost": not_succeeded + key_check["lost"] + len(api_bad),
        "standin": {k: stats.get(k) for k in ("invoke_calls", "images_generated", "max_in_flight",
                                              "rekognition_calls", "errors_returned")},
        "queue_left": queue_depth(sqs, resources["queue_url"]),
        "dead_letters": queue_depth(sqs, resources["dead_letter_queue_url"]),
        "spread": spread(instances, "/jobs", first - 1, last + 1),
        "worker_logs": {w.name: log_findings(w) for w in workers},
    }
    result.update(cpu_report(cpu, max(1, len(ended)), [i.name for i in instances], [w.name for w in workers]))
    r = result
    log(f"jobs: drained in {drain:.1f} s ({r['jobs_per_s']:.1f} jobs/s), states {dict(states)}, "
        f"model calls {r['standin']['invoke_calls']}, lost {r['lost']}")
    return result


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def _num(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def table(results: dict) -> tuple[list[list[str]], dict]:
    """Rows (figure, value, target, verdict) and the verdicts: FAIL is a correctness check, MISSED a speed target."""
    rows: list[list[str]] = []
    checks: dict = {}
    quick = results["config"]["quick"]

    def check(name: str, ok: bool) -> str:
        checks[name] = bool(ok)
        return "PASS" if ok else "FAIL"

    def target(ok: bool) -> str:
        return "(quick)" if quick else ("PASS" if ok else "MISSED")

    sync = results["phases"].get("sync")
    n = results["config"]["instances"]
    if sync:
        b, lat = sync["requests"], sync["model_latency_s"]
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(sync["statuses"].items()))
        rows.append([f"A. {b} simultaneous POST /generate_images via nginx, {n} instances: statuses", statuses,
                     "all 200", check("sync_all_200", sync["statuses"] == {"200": b} and sync["ok"] == b)])
        p = sync["latency_s"]
        rows.append([f"A. latency p50 / p95 / max, s (model {lat:g} s)",
                     f"{_num(p['p50'], '.2f')} / {_num(p['p95'], '.2f')} / {_num(p['max'], '.2f')}", "", ""])
        ratio = sync["p50_over_latency"]
        rows.append(["A. p50 / model latency", f"{_num(ratio, '.2f')}x",
                     f"<= {TARGETS['sync_p50_over_latency']}x",
                     target(not math.isnan(ratio) and ratio <= TARGETS["sync_p50_over_latency"])])
        per = sync["spread"]["instances"]
        rows.append(["A. requests answered per instance (peak in flight)",
                     " / ".join(f"{v['answered']} ({v['peak_in_flight']})" for v in per.values()), "", ""])
        answered = [w["answered"] for v in per.values() for w in v["processes"].values()]
        rows.append([f"A. requests per gunicorn worker process: fewest / most; began > {lat / 2:g} s late",
                     f"{min(answered, default=0)} / {max(answered, default=0)}; {sync['spread']['started_late']}",
                     "", ""])
        busy = sync["spread"]["instances_busy_at_once"]
        rows.append(["A. instances holding requests at once", f"{busy} of {n}", f">= {min(2, n)}",
                     check("sync_spread", busy >= min(2, n))])
        rows.append(["A. model calls (stand-in) / most in flight",
                     f"{sync['standin']['invoke_calls']} / {sync['standin']['max_in_flight']}", f"{b} / {b}", ""])
        cpu = sync["cpu_ms_per_unit"]
        rows.append(["A. CPU ms per request: web / nginx / stand-in / moto",
                     " / ".join(_num(cpu.get(k), ".1f") for k in ("web", "nginx", "standin", "moto")), "", ""])
        k = sync["keys"]
        rows.append(["A. lost keys (head_object on every reported key)", f"{k['lost']} of {k['unique']}", "0",
                     check("sync_keys", k["lost"] == 0 and k["check_errors"] == 0 and k["unique"] == b)])
    jobs = results["phases"].get("jobs")
    if jobs:
        cfg = results["config"]
        j = jobs["jobs"]
        rows.append([f"B. {j} POST /jobs via nginx ({cfg['clients']} clients): accepted, per s",
                     f"{jobs['accepted']} at {_num(jobs['submit_per_s'], '.0f')}/s "
                     f"(p50 {_num(jobs['submit_latency_s']['p50'] * 1000, '.0f')} ms)", f"{j} x 202",
                     check("jobs_accepted", jobs["accepted"] == j)])
        rows.append([f"B. drain: first submit to last job ended, s ({cfg['workers']} workers x "
                     f"{cfg['worker_jobs']} slots, model {jobs['model_latency_s']:g} s)",
                     f"{_num(jobs['drain_s'], '.1f')} ({_num(jobs['after_last_submit_s'], '.1f')} after the "
                     f"last submit)", "", ""])
        rows.append(["B. jobs per second (slots / model latency)",
                     f"{_num(jobs['jobs_per_s'], '.1f')} ({jobs['ideal_jobs_per_s']:.0f})", "", ""])
        rows.append(["B. queue wait p50 / max, run p50, s; most running at once",
                     f"{_num(jobs['queue_wait_s']['p50'], '.1f')} / {_num(jobs['queue_wait_s']['max'], '.1f')}, "
                     f"{_num(jobs['run_s']['p50'], '.2f')}; {jobs['peak_running']}", "", ""])
        states = ", ".join(f"{k} {v}" for k, v in sorted(jobs["states"].items()))
        rows.append(["B. job states", states or "-", "all succeeded",
                     check("jobs_succeeded", jobs["not_succeeded"] == 0 and jobs["drained"])])
        rows.append(["B. model calls (stand-in) for the jobs", f"{jobs['standin']['invoke_calls']} for {j}",
                     "== jobs", check("jobs_paid_once", jobs["standin"]["invoke_calls"] == j)])
        k = jobs["keys"]
        rows.append(["B. lost: not succeeded + keys missing + bad GET /jobs/<id>",
                     f"{jobs['not_succeeded']} + {k['lost']} of {k['unique']} + {jobs['api']['bad']}", "0",
                     check("jobs_lost", jobs["lost"] == 0 and k["check_errors"] == 0)])
        rows.append(["B. messages left in the queue / dead-letter queue",
                     f"{jobs['queue_left']} / {jobs['dead_letters']}", "0 / 0",
                     check("jobs_queue_empty", jobs["queue_left"] == 0 and jobs["dead_letters"] == 0)])
        cpu = jobs["cpu_ms_per_unit"]
        rows.append(["B. CPU ms per job: web / workers / moto / stand-in / nginx",
                     " / ".join(_num(cpu.get(x), ".1f") for x in ("web", "workers", "moto", "standin", "nginx")),
                     "", ""])
        moto_share = jobs["cpu_s"]["moto"] / jobs["wall_s"] if jobs["wall_s"] else float("nan")
        # moto is one Python process: its GIL holds it to about one core, whatever the machine has.
        rows.append(["B. machine busy; moto's share of one core; ceilings, jobs/s: all cores / moto's one",
                     f"{jobs['machine_busy_share']:.0%}; {_num(moto_share, '.0%')}; "
                     f"{_num((os.cpu_count() or 1) * 1000 / jobs['cpu_ms_per_unit_total'], '.1f')} / "
                     f"{_num(1000 / cpu['moto'] if cpu.get('moto') else float('nan'), '.1f')}", "", ""])
        workers = jobs["worker_logs"].values()
        web = results.get("web_logs", {}).values()
        rows.append(["B. ERROR lines in the logs (whole run): workers / web", f"{sum(w['errors'] for w in workers)} / "
                     f"{sum(w['errors'] for w in web)}", "0", ""])
        rows.append(["B. urllib3 'Connection pool is full' warnings (whole run): workers / web",
                     f"{sum(pool_full(w) for w in workers)} / {sum(pool_full(w) for w in web)}", "", ""])
    return rows, checks


def render(rows: list[list[str]]) -> str:
    header = ["figure", "value", "target", ""]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _interrupted(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # clean up on SIGTERM as on Ctrl-C
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
    args.logs_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"scale-{stamp}-", dir=args.logs_dir))
    out_path = args.out or RESULTS / f"scale-{stamp}.json"
    bucket = f"bench-scale-{run_id}".lower()[:63]
    folder_root = f"scale-{run_id}"
    results: dict = {
        "label": args.label, "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "revision": git_revision(servers.REPO),
        "config": {"quick": args.quick, "phases": sorted(args.phases), "instances": args.instances,
                   "burst": args.burst, "burst_latency_s": args.burst_latency, "jobs": args.jobs,
                   "job_latency_s": args.job_latency, "workers": args.workers, "worker_jobs": args.worker_jobs,
                   "clients": args.clients},
        "targets": TARGETS, "phases": {},
    }
    started: list[servers.Server] = []
    failed = False
    t_start = time.monotonic()
    try:
        log(f"logs in {run_dir}")
        standin = servers.start_standin(run_dir, args.burst_latency, "noise", 0.0)
        started.append(standin)
        moto = servers.start_moto(run_dir)
        started.append(moto)
        create_buckets(moto.url, [bucket])
        infra = {"standin": standin, "moto": moto}
        jobs_env: dict[str, str] = {}
        resources: dict = {}
        if "jobs" in args.phases:
            from jobs.aws_setup import create_job_resources

            sqs, dynamodb = aws_clients(moto.url)
            name = f"scale-{run_id}"
            resources = create_job_resources(sqs, dynamodb, name, name, max_receives=5, visibility_seconds=60,
                                             queue_seconds=3600)
            jobs_env = {"AIG_JOBS": "aws", "AIG_SQS_QUEUE_URL": resources["queue_url"],
                        "AIG_DYNAMODB_TABLE": resources["table"], "AWS_ENDPOINT_URL_SQS": moto.url,
                        "AWS_ENDPOINT_URL_DYNAMODB": moto.url}
            results["config"]["job_resources"] = resources
        log(f"stand-in at {standin.url}, moto at {moto.url}; starting {args.instances} instances")
        instances = start_instances(args, run_dir, bucket, standin.url, moto.url, jobs_env, started)
        nginx = start_nginx(run_dir, [int(i.url.rsplit(":", 1)[1]) for i in instances], args)
        started.append(nginx)
        env = instances[0].extra["env"]
        results["config"]["instance_env"] = env
        results["config"]["instance_capacity"] = int(env.get("AIG_WORKERS", 2)) * int(env.get("AIG_THREADS", 64))
        results["config"]["nginx_overrides"] = nginx.extra["overrides"]
        log(f"nginx at {nginx.url} -> {', '.join(i.url for i in instances)}; overrides: "
            + "; ".join(nginx.extra["overrides"]))
        if "sync" in args.phases:
            results["phases"]["sync"] = phase_sync(args, nginx, instances, infra, f"{folder_root}/sync", moto.url,
                                                   bucket)
        if "jobs" in args.phases:
            worker_env = service_env(bucket, standin.url, moto.url,
                                     {**jobs_env, "AIG_WORKER_JOBS": str(args.worker_jobs)})
            results["phases"]["jobs"] = phase_jobs(args, nginx, instances, infra, resources, worker_env, run_dir,
                                                   folder_root, moto.url, bucket, started)
        results["web_logs"] = {i.name: log_findings(i) for i in instances}
        results["nginx_errors"] = [line for line in nginx.extra["error_log"].read_text(errors="replace")
                                   .splitlines() if "[error]" in line or "[crit]" in line or "[alert]" in line][:10]
    except BaseException:
        failed = True
        raise
    finally:
        stop_all([s for s in started if s.name not in ("aws-standin", "moto-s3")])
        stop_all([s for s in started if s.name in ("aws-standin", "moto-s3")])
        results["duration_s"] = round(time.monotonic() - t_start, 1)
        if results["phases"]:
            rows, checks = table(results)
            results["table"], results["checks"] = rows, checks
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
            if args.out is None:
                shutil.copyfile(out_path, RESULTS / "scale-latest.json")
            print(render(rows))
            print("\nnginx: the repo's site, with in this generated copy only: "
                  + "; ".join(results["config"].get("nginx_overrides", [])))
            noisy = {name: p["foreign_cpu_share"] for name, p in results["phases"].items()
                     if p.get("foreign_cpu_share", 0) > 0.10}
            if noisy:
                print("warning: other processes used CPU during " + ", ".join(f"{k} {v:.0%}" for k, v in noisy.items())
                      + " of the machine's capacity; re-take the figures on a quiet machine")
            print(f"\n{'quick run: figures are not comparable to the targets; ' if args.quick else ''}"
                  f"{results['duration_s']:g} s; JSON: {out_path}")
        if failed or args.keep_logs or not all(results.get("checks", {True: True}).values()):
            log(f"logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    checks = results.get("checks")
    return 0 if checks and all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
