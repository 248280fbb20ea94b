"""Opening one model version, off the event loop: the ONNX file becomes an onnxruntime session,
verified against its config (Triton's rules, config.py) and its task (the rules given from above,
rules.py); a failure raises ModelError with one line naming the file and the problem, never a
server path, and nothing is kept. What a load serves (`choose`: versions and config) and what a
config may ask for at all (`admit`: the LIMIT_* settings and the warm-up rule) are decided here
too, before anything is allocated. The warm-up
that follows is warmup.py's; version.py's `open_version` puts them together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

import onnxruntime as ort

from coordconv.triton import Tensor
from service.errors import ModelError
from service.models import config as model_config
from service.models import warmup
from service.models.config import ModelConfig, Scheduling
from service.models.graph import rounded_inputs
from service.models.repository import ModelFiles
from service.models.rules import TaskRules
from service.models.runtime import graph_tensors, open_session
from service.settings import Settings


def choose(
    settings: Settings,
    name: str,
    files: ModelFiles,
    override: ModelConfig | None,
    versions: list[int] | None,
) -> tuple[list[int], ModelConfig | None, str]:
    """What a load of `name` serves: the versions (`versions`: exactly these; else as the
    config's version_policy picks on disk), the config to serve them with (`override`, else
    config.pbtxt), and that config's identity; refused before anything is allocated."""
    if override is not None:
        config: ModelConfig | None = override
        config_id = hashlib.sha256(override.SerializeToString(deterministic=True)).hexdigest()
    else:
        config = model_config.from_text(files.config_text, name, settings.strict_model_config)
        config_id = str(files.fingerprint[0])
    policy = config if config is not None else ModelConfig()
    # An ensemble's version folders hold no model file (as in Triton).
    on_disk = sorted(files.folders if model_config.is_ensemble(config) else files.versions)
    if versions is not None:
        missing = sorted(set(versions) - set(on_disk))
        if missing:
            raise ModelError(f"model {name}: versions {missing} are no longer on disk")
        chosen = sorted(versions)
    else:
        chosen = model_config.select_versions(policy, on_disk)
    if not chosen:
        raise ModelError(
            f"model {name}: no version to serve (on disk: {on_disk or 'none'}; "
            f"version_policy {model_config.to_json(policy).get('version_policy', 'latest 1')})"
        )
    if config is not None:  # bounds, before anything is allocated
        admit(model_config.complete(config, name, settings), name, settings, len(chosen))
    elif len(chosen) > settings.limit_versions:
        raise ModelError(
            f"model {name}: versions to serve {len(chosen)} exceeds the limit "
            f"{settings.limit_versions} (LIMIT_VERSIONS)"
        )
    return chosen, config, config_id


def admit(config: ModelConfig, name: str, settings: Settings, versions: int) -> None:
    """An effective config that asks for more than the service allows (LIMIT_*), or a
    model_warmup that cannot run, is refused with one line before anything is allocated."""
    where = f"model {name}"
    model_config.check_limits(config, where, settings, versions)
    warmup.check(config, where, settings)


@dataclass
class Opened:
    """A verified session and what was read off it and its config."""

    task: str
    sha256: str
    config: ModelConfig  # the effective config
    scheduling: Scheduling
    session: ort.InferenceSession
    inputs: list[Tensor]
    outputs: list[Tensor]  # in the task's order
    runs_on: str  # the execution provider in use
    about: dict[str, Any]  # what /v1/models says of its metadata (the task rules')
    rounded_inputs: frozenset[str] = field(default_factory=frozenset)

    def parts(self) -> dict[str, Any]:
        """Its fields, as the version built of them takes them (shallow: the session itself)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def open_model(
    name: str,
    data: bytes,
    config: ModelConfig | None,
    settings: Settings,
    *,
    providers: list[str],
    where: str,
    rules: TaskRules,
) -> Opened:
    """Blocking: build the session of model `name` from its ONNX file's bytes and verify it.
    `config` is the parsed config.pbtxt (None: derive it from the graph); `where` is how
    messages name the version and its file, `rules` what its task requires."""
    session = open_session(data, config, settings, providers, where)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    task = rules.task(meta, where)
    inputs = graph_tensors(session.get_inputs())
    outputs = graph_tensors(session.get_outputs())
    if config is None:
        config = model_config.from_graph(name, inputs, outputs)
    batching = config.max_batch_size > 0 or not settings.strict_model_config
    model_config.verify(config, name, inputs, outputs, where, batching)
    effective = model_config.complete(config, name, settings)
    ordered = rules.check(task, effective, where)
    admit(effective, name, settings, versions=1)
    scheduling = model_config.scheduling(effective, f"model {name}: config.pbtxt", settings)
    provider = session.get_providers()[0]
    if settings.require_gpu and provider != "CUDAExecutionProvider":
        raise ModelError(f"REQUIRE_GPU is set but model {name} runs on {provider}")
    opened = Opened(
        task=task,
        sha256=hashlib.sha256(data).hexdigest(),
        config=effective,
        scheduling=scheduling,
        session=session,
        inputs=model_config.tensors_of(effective, "input"),
        outputs=ordered,
        runs_on=provider,
        about=rules.describe(meta),
    )
    if effective.response_cache.enable:
        opened.rounded_inputs = rounded_inputs(data, [t.name for t in opened.inputs])
    return opened
