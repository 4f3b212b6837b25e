"""What a benchmark run leaves: a Markdown table, ``latest.json`` and a bar chart of the ratios.

The chart is drawn with Pillow, already needed to make the JPEGs, rather than matplotlib, which
would bring NumPy and a dozen other packages for six bars.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from bench.proc import CORES, MIB
from bench.scenarios import Target

RSS_LIMIT_MIB = 64


@dataclass(slots=True)
class ScenarioResult:
    key: str
    title: str
    unit: str
    target: Target
    a_label: str
    b_label: str
    cpu_target: Target | None = None
    file_work_of: str | None = None
    rss_sum_limit_mib: float | None = None
    """The bound on the processes' summed peaks, where the issue sets one for a server of
    several (T: 256 MiB with 2 workers busy); else each process is held to RSS_LIMIT_MIB."""
    a_values: list[float] = field(default_factory=list)
    b_values: list[float] = field(default_factory=list)
    a_cpu: list[float] = field(default_factory=list)
    b_cpu: list[float] = field(default_factory=list)
    """Per round, the server's CPU seconds per request (or per run, for the timed scenarios)."""
    a_idle: list[float] = field(default_factory=list)
    b_idle: list[float] = field(default_factory=list)
    """Per round, the core-seconds the whole machine was idle, per request (or per run)."""
    a_bad_responses: int = 0
    peak_rss: list[list[int]] = field(default_factory=list)
    """Per round, the peak RSS in bytes of each clustr_aio process involved."""

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a_values, self.b_values, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def cpu_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a_cpu, self.b_cpu, strict=True) if b > 0]

    @property
    def cpu_ratio(self) -> float | None:
        """The median of the per-round ratios of server CPU, A / B."""
        ratios = self.cpu_ratios
        return statistics.median(ratios) if ratios else None

    @property
    def cpu_met(self) -> bool:
        ratio = self.cpu_ratio
        return self.cpu_target is None or (ratio is not None and self.cpu_target.met_by(ratio))

    @property
    def peak_rss_mib(self) -> float:
        """The largest peak of any single process, over all rounds."""
        return max((max(r) for r in self.peak_rss if r), default=0) / MIB

    @property
    def peak_rss_sum_mib(self) -> float:
        """The largest sum of the processes' peaks (an upper bound of their joint peak)."""
        return max((sum(r) for r in self.peak_rss), default=0) / MIB

    @property
    def ratio_met(self) -> bool:
        return self.target.met_by(self.ratio) and (self.unit == "s" or self.a_bad_responses == 0)

    @property
    def rss_met(self) -> bool:
        if self.rss_sum_limit_mib is not None:
            return self.peak_rss_sum_mib <= self.rss_sum_limit_mib
        return self.peak_rss_mib <= RSS_LIMIT_MIB

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "target"},
            "target": {
                "ratio": self.target.ratio,
                "higher_is_better": self.target.higher_is_better,
            },
            "cpu_target": None if self.cpu_target is None else self.cpu_target.ratio,
            "a_median": statistics.median(self.a_values),
            "b_median": statistics.median(self.b_values),
            "a_cpu_median": statistics.median(self.a_cpu),
            "b_cpu_median": statistics.median(self.b_cpu),
            "ratios": self.ratios,
            "median_ratio": self.ratio,
            "ratio_met": self.ratio_met,
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "peak_rss_sum_mib": round(self.peak_rss_sum_mib, 1),
            "rss_met": self.rss_met,
            "cpu_ratios": self.cpu_ratios,
            "median_cpu_ratio": self.cpu_ratio,
            "cpu_met": self.cpu_met,
        }


def _number(value: float, unit: str) -> str:
    if unit == "ms":  # a latency measured in-process (the catalog's K, K2)
        return f"{value:.2f} ms"
    return f"{value:.2f} s" if unit == "s" else f"{value:.0f} req/s"


def _cpu(result: ScenarioResult) -> str:
    """Server CPU time, A then B: per run for the timed scenarios, per request for wrk's."""
    a, b = statistics.median(result.a_cpu), statistics.median(result.b_cpu)
    if result.unit == "s":
        return f"{a:.2f} s / {b:.2f} s"
    return f"{a * 1e3:.2f} ms / {b * 1e3:.2f} ms"


def table(results: list[ScenarioResult], machine: str) -> str:
    """The results as Markdown, under a line naming the machine (its CPU model first)."""
    rows = [
        f"Measured on {machine}.",
        "",
        "| | scenario | clustr_aio (A) | reference (B) | A / B, median of rounds | target "
        "| server CPU, A / B | CPU A / B, median of rounds | CPU target | peak RSS | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = f"{r.peak_rss_mib:.0f} MiB"
        if any(len(p) > 1 for p in r.peak_rss):
            rss += f" per process ({r.peak_rss_sum_mib:.0f} summed)"
        bad = f", {r.a_bad_responses} non-2xx" if r.unit == "req/s" else ""
        met = "yes" if r.ratio_met and r.rss_met and r.cpu_met else "**no**"
        cpu_ratio = r.cpu_ratio
        cpu_cell = (
            ""
            if cpu_ratio is None or r.unit == "ms"
            else f"**{cpu_ratio:.2f}** ({', '.join(f'{x:.2f}' for x in r.cpu_ratios)})"
        )
        rows.append(
            f"| {r.key} | {r.title} | {r.a_label}: {_number(statistics.median(r.a_values), r.unit)}"
            f"{bad} | {r.b_label}: {_number(statistics.median(r.b_values), r.unit)} "
            f"| **{r.ratio:.2f}** ({', '.join(f'{x:.2f}' for x in r.ratios)}) | {r.target} "
            f"| {_cpu(r)} | {cpu_cell} | {r.cpu_target or ''} | {rss} | {met} |"
        )
    return "\n".join(rows) + "\n"


def file_work(results: list[ScenarioResult]) -> list[str]:
    """What the per-file work nginx does not do costs on its own: side A's server CPU with it
    (L, B, C) minus without it (L0, B0, C0), medians."""
    by_key = {r.key: r for r in results}
    lines = []
    for bare in results:
        full = by_key.get(bare.file_work_of or "")
        if full is None:
            continue
        extra = statistics.median(full.a_cpu) - statistics.median(bare.a_cpu)
        share = extra / statistics.median(full.a_cpu)
        amount = f"{extra:.2f} s" if full.unit == "s" else f"{extra * 1e3:.2f} ms per request"
        lines.append(
            f"per-file work in {full.key} (its CPU minus {bare.key}'s): {amount}, "
            f"{share:.0%} of {full.key}'s server CPU; "
            + _added_wall(full, full.a_values, bare.a_values, bare.a_idle, extra)
        )
    catalog = by_key.get("BC")  # its sides are the servers with and without the catalog
    if catalog is not None and catalog.b_idle:
        extra = statistics.median(catalog.a_cpu) - statistics.median(catalog.b_cpu)
        lines.append(
            f"the catalog's work in BC (A's CPU minus B's): {extra:.2f} s; "
            + _added_wall(catalog, catalog.a_values, catalog.b_values, catalog.b_idle, extra)
        )
    return lines


def _added_wall(
    result: ScenarioResult,
    with_work: list[float],
    without: list[float],
    idle_without: list[float],
    extra: float,
) -> str:
    """What ``extra`` seconds of CPU (per request) added to the wall time, beside the least
    they could have added on this machine: fitted into the core-seconds it left idle in the
    run without them, and what does not fit spread over every core. The bound says whether
    "off the critical path, ≤ 10 % of wall time" can hold here at all: with the client on
    the same cores, the idle room can be smaller than the work. (Only on a quiet machine:
    anything else running takes idle time that the measured run would have had.)"""
    if not idle_without:
        return "no idle time measured"

    def wall_per_request(values: list[float]) -> float:  # seconds, or 1 / rate for wrk's
        value = statistics.median(values)
        return value if result.unit == "s" else 1 / value

    bare_wall = wall_per_request(without)
    added = wall_per_request(with_work) / bare_wall - 1
    idle = statistics.median(idle_without)
    least = max(0.0, extra - idle) / CORES / bare_wall
    per = "" if result.unit == "s" else " per request"
    return (
        f"it added {added:+.0%} to the wall time; the machine had {idle:.2f} core-s{per} idle "
        f"without it: fitted into that, the rest spread over {CORES} cores, at best {least:+.0%}"
    )


def write_json(path: Path, results: list[ScenarioResult], meta: dict[str, Any]) -> None:
    document = {**meta, "scenarios": [r.to_json() for r in results]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def chart(path: Path, results: list[ScenarioResult], caption: str) -> None:
    """One horizontal bar per scenario: its median ratio, the target as a black tick, green when
    the target (ratio and RSS) is met, red when not."""
    width, bar_h, gap, left, top = 900, 34, 14, 150, 60
    height = top + len(results) * (bar_h + gap) + 60
    scale_max = max(
        [2.5, *(r.ratio * 1.1 for r in results), *(r.target.ratio * 1.1 for r in results)]
    )
    plot_w = width - left - 40

    def x_of(ratio: float) -> int:
        return left + round(plot_w * ratio / scale_max)

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    draw.text(
        (10, 10), "clustr_aio / reference, median of per-round ratios", fill="black", font=font
    )
    draw.text((10, 32), caption, fill="dimgray", font=small)
    for tick in range(int(scale_max * 2) + 1):
        x = x_of(tick / 2)
        draw.line([(x, top - 5), (x, height - 50)], fill="gainsboro")
        draw.text((x - 8, height - 45), f"{tick / 2:g}", fill="dimgray", font=small)
    x1 = x_of(1.0)
    draw.line([(x1, top - 5), (x1, height - 50)], fill="gray", width=2)
    for i, r in enumerate(results):
        y = top + i * (bar_h + gap)
        ok = r.ratio_met and r.rss_met
        draw.rectangle([(left, y), (x_of(r.ratio), y + bar_h)], fill="#4caf50" if ok else "#e53935")
        tx = x_of(r.target.ratio)
        draw.line([(tx, y - 4), (tx, y + bar_h + 4)], fill="black", width=3)
        draw.text((10, y + 2), f"{r.key}  ({r.unit})", fill="black", font=font)
        draw.text((10, y + 19), f"target {r.target.ascii()}", fill="dimgray", font=small)
        label = f"{r.ratio:.2f}  RSS {r.peak_rss_mib:.0f} MiB"
        # Right of both the bar and the target tick, so neither hides it.
        draw.text((max(x_of(r.ratio), tx) + 8, y + 9), label, fill="black", font=small)
    draw.text(
        (left, height - 25),
        "time scenarios (s): lower is better; rate scenarios (req/s): higher is better",
        fill="dimgray",
        font=small,
    )
    image.save(path, optimize=True)
