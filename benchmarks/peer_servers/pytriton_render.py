"""NVIDIA PyTriton serving the same render ONNX model as this service: Triton's C++ HTTP front end
and dynamic batcher (max batch 64, 500 us queue delay, as models/render/config.pbtxt), onnxruntime
with this service's session options in the Python infer function. Runs in its own virtual
environment (benchmarks/peers.py makes it):

    python pytriton_render.py MODEL.onnx HTTP_PORT GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import sys

import numpy as np
from ort_session import session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


def main() -> None:
    model, http_port, grpc_port, metrics_port = sys.argv[1], *map(int, sys.argv[2:5])
    sess = session(model)

    @batch
    def infer(coords: np.ndarray) -> dict[str, np.ndarray]:
        (image,) = sess.run(None, {"coords": coords.astype(np.float32, copy=False)})
        return {"image": image}

    config = TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    # Statistics and the rest open (loopback only): perf_analyzer reads the statistics.
    with Triton(
        config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])
    ) as triton:
        triton.bind(
            model_name="render",
            infer_func=infer,
            inputs=[Tensor(name="coords", dtype=np.float32, shape=(2,))],
            outputs=[Tensor(name="image", dtype=np.float32, shape=(64, 64))],
            config=ModelConfig(
                max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=500)
            ),
            strict=True,
        )
        print("pytriton: ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
