"""pytest-benchmark set-up for ``pytest benchmarks/ --benchmark-only [--quick] [--busy]``.

Each benchmark belongs to a ``group`` (one workload) and names its contender in
``extra_info["contender"]``; after the run, ``pytest_terminal_summary`` prints each group's
speed-up of every contender over the group's baseline, as ratios of medians measured in the same
run, beside the project's target for it.
"""

from __future__ import annotations

import pytest

from fastnn.bench.measure import busy_neighbour

# group -> [(baseline contender, contender to check, target speed-up), ...]
TARGETS: dict[str, list[tuple[str, str, float]]] = {}


def target(group: str, baseline: str, contender: str, ratio: float) -> None:
    TARGETS.setdefault(group, []).append((baseline, contender, ratio))


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    parser.addoption("--busy", action="store_true",
                     help="a busy-looping process beside every benchmark, as on a shared machine")


@pytest.fixture(autouse=True)
def _busy_neighbour(request):
    """With --busy, every benchmark runs beside a process spinning on one CPU."""
    with busy_neighbour(request.config.getoption("--busy")):
        yield


@pytest.fixture
def quick(request) -> bool:
    return request.config.getoption("--quick")


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    medians: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        if bench.stats is None:
            continue
        contender = bench.extra_info.get("contender", bench.name)
        medians.setdefault(bench.group or bench.name, {})[contender] = bench.stats.median
    quick = config.getoption("--quick")
    terminalreporter.write_sep("-", "speed-ups (ratio of medians, same run)" +
                               (" -- --quick sizes: the targets are for full runs" if quick else "") +
                               (" -- beside a busy process (--busy)" if config.getoption("--busy") else ""))
    for group, by_contender in sorted(medians.items()):
        goals = TARGETS.get(group, [])
        baselines = {baseline for baseline, _, _ in goals}
        for contender, median in sorted(by_contender.items(), key=lambda item: item[1]):
            line = f"{group:38s} {contender:14s} {median * 1e3:10.3f} ms"
            for baseline in sorted(baselines):
                base = by_contender.get(baseline)
                if not base:
                    continue
                line += f"   {base / median:6.2f}x vs {baseline}"
                for goal_base, checked, goal in goals:
                    if goal_base == baseline and contender == checked:
                        line += f" (target >= {goal:.2f}x: {'met' if base / median >= goal else 'NOT met'})"
            terminalreporter.write_line(line)
    # benchmarks that check a ratio within their own run (extra_info["checks"]: name, value, goal)
    for bench in session.benchmarks:
        for name, value, goal in bench.extra_info.get("checks", []):
            contender = bench.extra_info.get("contender", bench.name)
            terminalreporter.write_line(f"{bench.group or bench.name:38s} {contender:14s} {name} {value:6.2f} "
                                        f"(target >= {goal:.2f}: {'met' if value >= goal else 'NOT met'})")
