"""The data-parallel benchmark (``benchmarks/distributed.py``) as part of the suite: one run of
the whole script (``mpiexec`` ranks included) per session; ``--quick`` keeps it to seconds.

    pytest benchmarks/test_distributed.py --benchmark-only [--quick]
"""

from __future__ import annotations

import distributed as script


def test_distributed_training_and_allreduce(benchmark, quick):
    benchmark.group = "distributed (2 ranks, MPI)"
    benchmark.extra_info["contender"] = "benchmarks/distributed.py"
    result = benchmark.pedantic(script.main, args=(["--quick"] if quick else [],), rounds=1, iterations=1)
    assert result["parallel"]["ranks"] == 2
    assert all(row["seconds"] > 0 for row in result["parallel"]["allreduce"])
    for net, figures in result["parallel"]["training"].items():
        assert figures["samples_per_s"] > 0 and 0 <= figures["allreduce_fraction"] < 1, net
    benchmark.extra_info["report"] = result["report"]
