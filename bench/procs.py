"""What a process tree costs, read from /proc: CPU seconds (utime+stime) and memory (PSS, RSS).

The tree is a gunicorn master and all its descendants. The benchmark reads it before and after a
phase; the load generator and the stand-ins run in other processes and are never counted.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat the benchmark needs."""

    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime of the process itself (all its threads)
    child_ticks: int  # cutime + cstime: children that exited and were reaped


def read_stat(pid: int) -> Stat | None:
    """/proc/<pid>/stat, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    return Stat(pid, int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))


def all_stats() -> dict[int, Stat]:
    """A stat of every process on the machine."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int, stats: dict[int, Stat] | None = None) -> list[Stat]:
    """`root` and all its descendants (empty when root is gone)."""
    stats = all_stats() if stats is None else stats
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(stats[pid])
        todo.extend(children.get(pid, ()))
    return found


def tree_pids(root: int) -> list[int]:
    """The pids of `root` and all its descendants."""
    return [stat.pid for stat in tree(root)]


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the tree: live processes plus the children they reaped.

    A worker that dies during a phase moves its time into its master's cutime, so the total stays
    continuous as long as the master lives.
    """
    return sum(stat.cpu_ticks + stat.child_ticks for stat in tree(root)) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; PSS from smaps_rollup when readable, else RSS; (0, 0) when gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
        return pss or rss, rss
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE_KIB
    except (OSError, ValueError, IndexError):
        return 0, 0
    return rss, rss


def tree_memory_kib(root: int) -> tuple[int, int]:
    """(PSS, RSS) summed over the tree, in KiB."""
    pss = rss = 0
    for pid in tree_pids(root):
        p, r = memory_kib(pid)
        pss += p
        rss += r
    return pss, rss


class MemorySampler:
    """Samples the tree's summed PSS and RSS every `interval` seconds on a thread; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.1):
        self.root = root
        self.interval = interval
        self.peak_pss_kib = 0
        self.peak_rss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            pss, rss = tree_memory_kib(self.root)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine from /proc/stat's first line."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    values += [0] * (8 - len(values))
    # user nice system idle iowait irq softirq steal (guest time is already inside user).
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle - values[7], values[7], total


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """CPU seconds of one or more trees between enter and exit, with the wall time."""

    def __init__(self, roots: dict[str, int]):
        self.roots = roots
        self.seconds: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.roots.items()}
        self._machine = machine_ticks()
        self._self = _own_cpu()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self._t0
        self.seconds = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.roots.items()}
        busy, steal, total = (b - a for a, b in zip(self._machine, machine_ticks(), strict=True))
        # Shares of all CPUs' time over the phase: a high steal means a noisy host, figures to re-take.
        self.machine = {"busy": busy / total if total else 0.0, "steal": steal / total if total else 0.0}
        # CPU used by processes that are neither measured here nor the load generator (other jobs on the
        # host, e.g. a test suite): a share of all CPUs' capacity; high values make a run noisy.
        bench = _own_cpu() - self._self
        capacity = self.wall * (os.cpu_count() or 1)
        foreign = busy / CLK_TCK - sum(self.seconds.values()) - bench
        self.machine["load_generator_s"] = bench
        self.machine["foreign"] = max(0.0, foreign / capacity) if capacity else 0.0
