"""Triton's metric families with `coordconv serve --workers 2`: every worker's /metrics sums all
of them as the statistics extension does, and an unloaded model's series go from every worker
(the single-process cases: tests/service/test_triton_metrics.py)."""

from __future__ import annotations

from tests.helpers import Workers
from tests.service.test_triton_metrics import TRITON, Scrape, assert_agrees_with_statistics


def test_workers_sum_every_worker_as_the_statistics_do() -> None:
    with Workers("--model-control-mode", "explicit", "--load-model", "render", count=2) as w:
        clients = w.by_worker()
        for i in (0, 1):
            for _ in range(2 + i):
                r = clients[i].post("/v1/render", json={"coords": [[9, 9], [30, 40]]})
                assert r.status_code == 200, r.text
            bad = clients[i].post("/v1/render", json={"coords": [[99, 9]]})
            assert bad.status_code == 400
        for i in (0, 1):
            s = Scrape(clients[i].get("/metrics").text)
            entries = clients[i].get("/v2/models/stats").json()["model_stats"]
            stats = {(e["name"], e["version"]): e for e in entries}
            for name, kind in TRITON.items():
                assert s.types.get(name) == kind, name
            render = {"model": "render", "version": "2"}
            assert s.value("nv_inference_request_success", **render) == 5
            assert s.value("nv_inference_request_failure", **render, reason="OTHER") == 2
            assert s.value("nv_inference_count", **render) == 10
            assert_agrees_with_statistics(s, stats)
        for c in clients.values():
            c.close()
        code, out = w.stop()
        assert code == 0, out


def test_with_workers_an_unloaded_models_series_go_as_with_one_process() -> None:
    with Workers(
        "--model-control-mode",
        "explicit",
        "--load-model",
        "render",
        "--load-model",
        "locate",
        count=2,
    ) as w:
        clients = w.by_worker()
        for i in (0, 1):
            r = clients[i].post("/v1/render", json={"coords": [[9, 9]]})
            assert r.status_code == 200, r.text
        assert clients[0].post("/v2/repository/models/render/unload").status_code == 200
        for i in (0, 1):
            gone = Scrape(clients[i].get("/metrics").text)
            for name in TRITON:
                if not name.startswith("nv_cpu"):
                    left = [ls for ls in gone.series(name) if ls.get("model") == "render"]
                    assert not left, (i, name, left)
            # what is still served keeps its series; this service's own counters stay
            assert gone.value("nv_inference_request_success", model="locate", version="2") == 0
            assert gone.value("coordconv_inference_count_total", model="render", version="2") == 2
        for c in clients.values():
            c.close()
        code, out = w.stop()
        assert code == 0, out
