"""onnxruntime: the execution providers that load here, the session options chosen for serving,
and a session built for one version (its providers from `instance_group`)."""

from __future__ import annotations

import logging

import onnxruntime as ort

from service.errors import ModelError
from service.models import config as model_config
from service.models.config import GraphTensor, ModelConfig
from service.settings import Settings

log = logging.getLogger("coordconv.model")
PROVIDERS = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def session_options(settings: Settings) -> ort.SessionOptions:
    """Chosen deliberately: intra-op threads from settings (0 lets onnxruntime use one per
    physical core); one inter-op thread (the graphs are sequential chains); no spinning, because
    the batcher leaves gaps between calls in which spinning threads would steal the CPU from the
    event loop that parses requests; full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_session(
    data: bytes,
    config: ModelConfig | None,
    settings: Settings,
    providers: list[str],
    where: str,
) -> ort.InferenceSession:
    """A session of the ONNX file's bytes on the providers `instance_group` allows (KIND_GPU
    without a GPU in use is refused); ModelError with onnxruntime's first line."""
    if config is not None:
        kind = model_config.instance_kind(config)
        if kind == "gpu" and "CUDAExecutionProvider" not in providers:
            raise ModelError(
                f"{where}: instance_group asks for KIND_GPU but no GPU is in use "
                f"(execution providers: {', '.join(providers)})"
            )
        if kind == "cpu":
            providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(data, session_options(settings), providers=providers)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{where}: cannot load the ONNX file: {first[:300]}") from None


def graph_tensors(values: list[ort.NodeArg]) -> list[GraphTensor]:
    return [GraphTensor(v.name, v.type, tuple(v.shape)) for v in values]


def usable_providers(settings: Settings, probe_model: bytes | None) -> tuple[list[str], str | None]:
    """The execution providers to use, and a line saying which wanted ones are unavailable.
    GPU providers that cannot load here are dropped with one line instead of onnxruntime's
    library errors for every session."""
    wanted = [PROVIDERS[p] for p in settings.provider_list]
    gpu = [p for p in wanted if p != "CPUExecutionProvider"]
    if not gpu:
        return wanted, None
    active = ["CPUExecutionProvider"]
    if probe_model is not None and any(p in ort.get_available_providers() for p in gpu):
        ort.set_default_logger_severity(4)  # silence the probe's library errors
        try:
            active = ort.InferenceSession(probe_model, providers=wanted).get_providers()
        except Exception as exc:  # a corrupt probe model is reported when it is loaded
            log.debug("provider probe failed: %s", exc)
        finally:
            ort.set_default_logger_severity(2)
    usable = [p for p in wanted if p in active] or ["CPUExecutionProvider"]
    missing = [p for p in gpu if p not in active]
    problem = None
    if missing:
        problem = (
            f"{', '.join(missing)} unavailable (no GPU, or its CUDA/cuDNN libraries are missing; "
            f"onnxruntime {ort.__version__})"
        )
    return usable, problem
