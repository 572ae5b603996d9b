"""The load: POST /generate_images from threads, each with its own keep-alive `requests` session."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

PROMPT = "a red porsche on a mountain road at dusk, photo"


@dataclass
class Outcome:
    """One request: when it started and ended (monotonic), its status and the keys it reported."""

    start: float
    end: float
    status: int  # 0 when no HTTP answer came (connection error, time-out)
    keys: list[str] = field(default_factory=list)
    error: str = ""
    timings_ms: dict = field(default_factory=dict)  # ours reports its stages' wall times

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.keys)


class Target:
    """A service under load: its URL and a folder scheme that keeps every request's keys apart."""

    def __init__(self, url: str, folder_root: str):
        self.url = url.rstrip("/") + "/generate_images"
        self.folder_root = folder_root
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def body(self, phase: str) -> dict:
        """A body in a folder of its own: the seed deletes the files of a folder reused concurrently."""
        with self._lock:
            n = next(self._counter)
        return {"prompt": PROMPT, "output_folder": f"{self.folder_root}/{phase}/r{n:05d}",
                "file_name_prefix": "bench_image"}

    def post(self, session: requests.Session, phase: str, timeout: float) -> Outcome:
        """One request; never raises."""
        body = self.body(phase)
        start = time.monotonic()
        try:
            answer = session.post(self.url, json=body, timeout=timeout)
            end = time.monotonic()
        except requests.RequestException as error:
            return Outcome(start, time.monotonic(), 0, error=type(error).__name__)
        keys: list[str] = []
        error = ""
        timings: dict = {}
        if answer.status_code == 200:
            try:
                manifest = answer.json()
                keys = [key for key in manifest["images"] if isinstance(key, str)]
                if isinstance(manifest.get("timings_ms"), dict):
                    timings = manifest["timings_ms"]
            except (ValueError, KeyError, TypeError, AttributeError):
                error = "unparsable 200 answer"
        else:
            error = _error_code(answer)
        return Outcome(start, end, answer.status_code, keys, error, timings)


def _error_code(answer: requests.Response) -> str:
    try:
        return str(answer.json().get("code", ""))[:80]
    except ValueError:
        return answer.text[:80].replace("\n", " ")


def sequential(target: Target, phase: str, count: int, timeout: float) -> list[Outcome]:
    """`count` requests one after the other on one keep-alive session."""
    with requests.Session() as session:
        return [target.post(session, phase, timeout) for _ in range(count)]


def closed_loop(target: Target, phase: str, clients: int, timeout: float, *, duration: float | None = None,
                requests_total: int | None = None) -> tuple[list[Outcome], float, float]:
    """`clients` threads each sending its next request when the last one is answered.

    Stops starting requests after `duration` seconds or once `requests_total` were started; those
    in flight finish. Returns the outcomes, the start and the end (last answer) times.
    """
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    started = itertools.count()
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        with requests.Session() as session:
            barrier.wait()
            while True:
                if duration is not None and time.monotonic() >= stop_at[0]:
                    return
                if requests_total is not None and next(started) >= requests_total:
                    return
                outcome = target.post(session, phase, timeout)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + (duration or 0.0)
    barrier.wait()
    for thread in threads:
        thread.join()
    end = max((o.end for o in outcomes), default=time.monotonic())
    return outcomes, t0, end


def burst(target: Target, phase: str, count: int, timeout: float) -> list[Outcome]:
    """`count` requests sent at the same instant, each on its own connection."""
    if count <= 0:
        return []
    outcomes: list[Outcome | None] = [None] * count
    sessions = [requests.Session() for _ in range(count)]
    barrier = threading.Barrier(count)

    def one(index: int) -> None:
        barrier.wait()
        outcomes[index] = target.post(sessions[index], phase, timeout)

    threads = [threading.Thread(target=one, args=(i,), name=f"burst-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for session in sessions:
        session.close()
    return [o for o in outcomes if o is not None]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, linear between closest ranks; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(outcomes: list[Outcome]) -> dict:
    """Counts, error kinds and latency percentiles (successful requests only) of a set of outcomes."""
    good = [o for o in outcomes if o.ok]
    latencies = sorted(o.latency for o in good)
    errors = Counter(f"{o.status} {o.error}".strip() for o in outcomes if not o.ok)
    stages = sorted({stage for o in good for stage in o.timings_ms})
    timings = {stage: percentile([float(o.timings_ms[stage]) for o in good if stage in o.timings_ms], 50)
               for stage in stages}
    return {
        "requests": len(outcomes),
        "ok": len(good),
        "errors": len(outcomes) - len(good),
        "error_kinds": dict(errors),
        "images": sum(len(o.keys) for o in good),
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "min": percentile(latencies, 0),
            "max": percentile(latencies, 100),
        },
        # The service's own per-stage wall times (median over requests), when it reports them.
        "service_timings_ms_p50": timings,
    }
