"""NVIDIA Triton's own load generator, perf_analyzer, drives the service over the V2 protocol and
prints the server-side breakdown it reads from the statistics extension."""

from __future__ import annotations

import os

import pytest

from benchmarks import perf_analyzer


@pytest.fixture(scope="module")
def binary() -> None:
    reason = perf_analyzer.available()
    if reason is not None:
        if os.environ.get("CI") == "true":  # `make test` installs it: missing in CI is a bug
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.parametrize("model", ["render", "locate"])
def test_perf_analyzer_reads_the_statistics_extension(binary, server, model) -> None:
    r = perf_analyzer.run(
        f"127.0.0.1:{server.port}", model, concurrency=4, window_ms=1000, stability_pct=60
    )
    assert r.throughput > 0
    # "Avg request latency: N usec (overhead N usec + queue N usec + compute input N usec +
    # compute infer N usec + compute output N usec)": the server side, from /v2/.../stats.
    # With response_cache enabled in the config (render), perf_analyzer splits the compute
    # phases under "Average Cache Miss Latency" instead, as it does against Triton.
    assert "queue" in r.server, r.output[-1500:]
    if "cache hit/miss" in r.server:
        assert "Cache miss count" in r.output and "compute infer" in r.output, r.output[-1500:]
    else:
        assert "compute infer" in r.server, r.output[-1500:]
    assert "Successful request count" in r.output
