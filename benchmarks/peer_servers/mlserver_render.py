"""MLServer serving the same render ONNX model: a custom runtime (MLServer has no onnxruntime
runtime of its own) with this service's session options, behind MLServer's adaptive batching
(max batch 64, 500 us, as models/render/config.pbtxt). benchmarks/peers.py writes its
settings.json and model-settings.json and runs `mlserver start` in its own virtual environment."""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from ort_session import session


class OnnxRender(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self.sess = session(str(uri))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        coords = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (image,) = self.sess.run(None, {"coords": coords})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("image", image)]
        )
