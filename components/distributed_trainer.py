"""DistributedTrainer: TFX's Trainer, training on one or several workers.

TFX's Trainer calls `run_fn` once, in its own process. This component keeps the Trainer's
inputs, outputs and `run_fn` (`trainer.run.run_fn`, which builds MultiWorkerMirroredStrategy
from `TF_CONFIG`) and decides where the workers run, from the config it already receives
(docs/distributed.md):

- `training.workers: 1` (default): in-process, exactly TFX's Trainer.
- `training.workers: N > 1`: N local worker processes on 127.0.0.1 (`components.local_workers`),
  restarted as a group when one is lost or killed, failing at once on a worker's own error.
- on Kubeflow (the step runs in a Kubernetes pod), `kubeflow.trainer: trainjob` or `tfjob`:
  a Kubeflow Trainer v2 TrainJob or a Training Operator TFJob of `training.workers` pods
  (`components.kubernetes_training`), created, waited for, its failed pods' errors reported.
  Outside a cluster, the same config trains with local workers.

Every worker runs `components.training_worker` (TFX's Trainer executor on the step's
artifacts). After training, the step checks that the chief wrote the serving model.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import json_utils
from tfx.utils import path_utils

from components import kubernetes_training
from components.local_workers import run_local_workers
from components.training_worker import DistributedTrainingError, job_description
from pipeline.config import PipelineConfig
from trainer.preprocessing import CONFIG_KEY

# ---------------------------------------------------------------------------------------------
# The component.


def check_model_written(serving_model_dir: str) -> None:
  if not fileio.exists(os.path.join(serving_model_dir, 'saved_model.pb')):
    raise DistributedTrainingError(
        f'the workers finished but the chief wrote no model to {serving_model_dir}')


class Executor(trainer_executor.GenericExecutor):
  """TFX's generic Trainer executor, run in-process, by local workers or by a Kubernetes job."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    custom_config = json_utils.loads(
        exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or 'null') or {}
    config = PipelineConfig.from_json(custom_config[CONFIG_KEY])
    trainer = config.kubeflow.trainer
    on_kubernetes = (trainer in kubernetes_training.JOB_KINDS
                     and kubernetes_training.in_kubernetes_pod())
    if config.training.workers == 1 and not on_kubernetes:
      super().Do(input_dict, output_dict, exec_properties)
      return
    model_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.MODEL_KEY])
    job = job_description(input_dict, output_dict, exec_properties)
    if on_kubernetes:
      namespace = config.kubeflow.namespace or kubernetes_training.own_namespace()
      manifest = kubernetes_training.job_manifest(config, job, model_uri, namespace)
      kubeflow = config.kubeflow
      if trainer == 'trainjob':
        kubernetes_training.submit_and_wait(manifest, kubeflow.trainjob_timeout_seconds,
                                            kubeflow.trainjob_start_timeout_seconds)
      else:
        kubernetes_training.submit_and_wait(manifest, kubeflow.tfjob_timeout_seconds)
    else:
      if trainer in kubernetes_training.JOB_KINDS:
        logging.info('kubeflow.trainer is %s, but this is not a Kubernetes pod: training '
                     'with %d local workers', trainer, config.training.workers)
      result = run_local_workers(job, config.training.workers, config.training)
      logging.info('%d training workers finished after %d start(s)', config.training.workers,
                   result.starts)
    check_model_written(path_utils.serving_model_dir(model_uri))


class DistributedTrainer(tfx.components.Trainer):
  """TFX's Trainer (same inputs, outputs and `run_fn`) training on `training.workers` workers:
  local processes, or a TrainJob or TFJob on Kubeflow (`kubeflow.trainer`)."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

