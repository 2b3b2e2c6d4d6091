"""Where fleetproxy spends its time: py-spy on the proxy during a keep-alive run.

Two sampling runs of the same load, each while wrk drives the proxy:

1. ``--format flamegraph``: an SVG to open in a browser;
2. ``--format raw``: collapsed stacks (speedscope.app and flamegraph.pl read
   them), from which the top functions by own ("self") and inclusive time are
   computed and written as text and Markdown.

py-spy samples from outside the process (ptrace), on the load CPUs, and runs
only in this extra step, never during the measured rounds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError, Placement, Processes
from loadgen import Wrk, WrkResult

_LINE_RE = re.compile(r"^(.*) (\d+)$")


def find_pyspy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    svg: Path
    collapsed: Path
    top_txt: Path
    samples: int
    self_top: list[tuple[str, int]]
    incl_top: list[tuple[str, int]]
    wrk: WrkResult
    native: bool

    def markdown(self, label: str, root: Path) -> str:
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(root))
            except ValueError:
                return str(p)

        out = [f"## Profile: {label}", "",
               f"py-spy, {self.samples} samples while wrk ran ({self.wrk.ok_rps:,.0f} req/s under the "
               f"sampler); flamegraph `{rel(self.svg)}`, collapsed stacks `{rel(self.collapsed)}` "
               "(open in speedscope.app). Files under `proxy/bench/out/` are not committed. "
               + ("Native frames included: own time in libc functions (`write`, `read`, `connect`, "
                  "`epoll_pwait`) is time in those system calls." if self.native else
                  "Python frames only: own time of a Python function includes the C code it calls "
                  "(uvloop transports, system calls)."), "",
               "| own time | function (native or Python) | | inclusive | Python function |", "|--:|---|---|--:|---|"]
        for (sf, sn), (if_, in_) in zip(self.self_top, self.incl_top, strict=False):
            out.append(f"| {100 * sn / self.samples:.1f}% | `{sf}` | | "
                       f"{100 * in_ / self.samples:.1f}% | `{if_}` |")
        return "\n".join(out)


def summarize(collapsed: Path, n: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples, top functions by own time (any frame), top Python functions by inclusive
    time (without the frames that are on every stack)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        stack, count = m.group(1).split(";"), int(m.group(2))
        frames = [_short(f) for f in stack if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    # Inclusive time is listed for Python functions (native frames are the event loop's
    # plumbing); frames on (nearly) every stack are the way into the loop: no information.
    inner = [(f, c) for f, c in incl.most_common() if c < 0.99 * total and ".py:" in f]
    return total, own.most_common(n), inner[:n]


def _short(frame: str) -> str:
    """``fn (/long/path/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py:12)``."""
    m = re.match(r"^(.*) \((.*)\)$", frame)
    if not m:
        return frame
    fn, where = m.groups()
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{fn} ({where})"


def profile(*, pyspy: str, pid: int, wrk: Wrk, url: str, duration: float, placement: Placement,
            procs: Processes, out_dir: Path, stem: str, native: bool = False, rate: int = 100) -> Profile:
    out_dir.mkdir(parents=True, exist_ok=True)
    svg = out_dir / f"{stem}.svg"
    collapsed = out_dir / f"{stem}.collapsed.txt"
    common = ["record", "--pid", str(pid), "--duration", f"{duration + 1:.0f}", "--rate", str(rate),
              "--function"]
    result = None
    for fmt, path in (("flamegraph", svg), ("raw", collapsed)):
        while True:
            argv = [pyspy, *common, *(["--native"] if native else []), "--format", fmt, "-o", str(path)]
            spy = procs.spawn(f"fpb-pyspy-{fmt}", argv, cpus=placement.cpus("load"))
            time.sleep(0.5)
            result = wrk.run(url, duration)
            try:
                spy.popen.wait(duration + 30)
            except subprocess.TimeoutExpired:
                procs.stop(spy)
            code = spy.popen.returncode
            procs.stop(spy)
            if code == 0 and path.exists():
                break
            if native:  # native unwinding is not available everywhere
                print(f"py-spy --native failed ({code}), again without it:\n{spy.tail()}", file=sys.stderr)
                native = False
                continue
            raise BenchError(f"py-spy failed ({code}):\n{spy.tail()}")
    assert result is not None
    samples, self_top, incl_top = summarize(collapsed)
    top_txt = out_dir / f"{stem}.top.txt"
    lines = [f"{samples} samples{' (with native frames)' if native else ''}; "
             f"{result.ok_rps:,.0f} req/s under py-spy", "", "own time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in self_top]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in incl_top]
    top_txt.write_text("\n".join(lines) + "\n")
    return Profile(svg, collapsed, top_txt, samples, self_top, incl_top, result, native)
