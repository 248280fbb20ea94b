"""benchmarks/peers.py's own pieces against this service: the requests it sends are answered
correctly, and its report says what each server was given. (`make bench-peers` runs the peers.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from benchmarks import bench, loadgen, peers
from tests.helpers import LiveServer
from training import data, metrics


def test_every_request_the_comparison_sends_is_answered_200(server: LiveServer) -> None:
    for request in (peers.v2_json_request(1), bench.v2_request("render", 1)):
        r = asyncio.run(loadgen.run("127.0.0.1", server.port, request, 4, 40, 10))
        assert r.requests == 40 and r.errors == 0 and r.statuses == {200: 40}


def test_the_json_request_renders_the_square_it_names(server: LiveServer) -> None:
    raw = peers.v2_json_request(3)
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    with server.client() as c:
        out = c.post("/v2/models/render/infer", json=body).json()["outputs"][0]
    images = np.asarray(out["data"], np.float32).reshape(out["shape"])
    coords = bench.inputs("render", 3)
    assert metrics.iou(images, data.squares(coords)).min() >= 0.99


def test_the_report_lists_versions_settings_and_every_row(tmp_path: Path) -> None:
    row = {
        "server": "pytriton",
        "case": "loadgen, V2 JSON, 1 item/request, 32 clients",
        "items_per_s": 1082.4,
        "p50_ms": 28.3,
        "p99_ms": 51.0,
        "errors": 0,
        "ratio": 0.417,
    }
    report = {
        "date": "2026-11-25",
        "machine": "x86_64, 2 CPUs",
        "limit_64": 2594.0,
        "versions": {"pytriton": {"nvidia-pytriton": "0.7.0"}},
        "rows": [row],
    }
    peers.write(report, tmp_path / "p.md", tmp_path / "p.json")
    md = (tmp_path / "p.md").read_text()
    assert (
        "| pytriton | loadgen, V2 JSON, 1 item/request, 32 clients "
        "| 1,082 | 0.42 | 28.3 | 51.0 | 0 |" in md
    )
    assert (
        "nvidia-pytriton 0.7.0" in md and "DynamicBatcher(max_queue_delay_microseconds=500)" in md
    )
    assert json.loads((tmp_path / "p.json").read_text()) == report
