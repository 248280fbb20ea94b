"""On a machine with a GPU: the service really runs the models with CUDA."""

from __future__ import annotations

import pytest

from tests.helpers import live_server


@pytest.mark.gpu
def test_models_run_on_cuda_and_require_gpu_starts() -> None:
    with live_server(require_gpu=True) as live, live.client() as c:
        models = c.get("/v1/models").json()["models"]
        assert {m["provider"] for m in models} == {"CUDAExecutionProvider"}
        r = c.post("/v1/render", json={"coords": [[20, 20]], "format": "array"})
        assert r.status_code == 200


@pytest.mark.gpu
def test_training_runs_on_cuda_and_reaches_the_goal() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (a CPU build of torch?)")
    from experiments.recipe import train_config
    from training.train import train

    r = train(train_config("pixel", split="quadrant", device="cuda", progress=False))
    assert r["device"].startswith("cuda") and r["device_name"] != "CPU"
    assert r["goal_met"] and r["to_goal"] is not None
