"""ServingPusher: pushes a blessed model to TF Serving's directory, atomically, with warmup.

In place of TFX's Pusher (which copies straight into `<base>/<timestamp>`, so TF Serving can
see a half-copied version, and keeps every version forever):

- nothing happens unless the Evaluator blessed the model;
- the version is written by `components.serving_push.push_version`: staged, then renamed to
  its number under a lock; the last `keep_versions` versions are kept; `models.config` gets the
  `stable` (and, with `canary`, `canary`) version labels;
- `assets.extra/tf_serving_warmup_requests` holds PredictionLogs built from the Evaluator's
  sample eval examples, so TF Serving warms every signature up on load; next to it,
  `assets.extra/sample_predictions.json` keeps those examples with the Evaluator's predictions
  for `mtlp serve-check`.

The `pushed_model` artifact carries TFX's custom properties (`pushed`, `pushed_destination`,
`pushed_version`) plus `version_labels`, and a `push.json` with the same facts.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import base_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import serving_push
from components import serving_requests
from components.served_baseline_evaluator import SAMPLE_PREDICTIONS_FILE

MODEL_KEY = 'model'
BLESSING_KEY = 'model_blessing'
EVALUATION_KEY = 'evaluation'
PUSHED_MODEL_KEY = 'pushed_model'
PUSH_DIR_KEY = 'push_dir'
MODEL_NAME_KEY = 'model_name'
KEEP_VERSIONS_KEY = 'keep_versions'
CANARY_KEY = 'canary'
PUSH_RECORD_FILE = 'push.json'


class ServingPusherSpec(component_spec.ComponentSpec):
  PARAMETERS = {
      PUSH_DIR_KEY: component_spec.ExecutionParameter(type=str),
      MODEL_NAME_KEY: component_spec.ExecutionParameter(type=str),
      KEEP_VERSIONS_KEY: component_spec.ExecutionParameter(type=int),
      CANARY_KEY: component_spec.ExecutionParameter(type=int),
  }
  INPUTS = {
      MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
      BLESSING_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelBlessing),
      EVALUATION_KEY: component_spec.ChannelParameter(type=standard_artifacts.ModelEvaluation,
                                                      optional=True),
  }
  OUTPUTS = {
      PUSHED_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.PushedModel),
  }


def is_blessed(blessing: types.Artifact) -> bool:
  return (blessing.has_custom_property('blessed') and
          blessing.get_int_custom_property('blessed') == 1)


def _warmup_files(model_dir: str, model_name: str, evaluation: types.Artifact
                  ) -> Dict[str, bytes]:
  sample_path = os.path.join(evaluation.uri, SAMPLE_PREDICTIONS_FILE)
  if not tf.io.gfile.exists(sample_path):
    logging.warning('No sample predictions at %s: pushing without warmup requests.',
                    sample_path)
    return {}
  with tf.io.gfile.GFile(sample_path, 'rb') as f:
    sample = f.read()
  examples = [base64.b64decode(e) for e in json.loads(sample)['examples']]
  loaded = tf.saved_model.load(model_dir, tags=['serve'])
  logs = serving_requests.warmup_logs(model_name, loaded, examples)
  return {serving_requests.WARMUP_FILE: serving_requests.serialize_warmup(logs),
          serving_requests.SAMPLE_PREDICTIONS_FILE: sample}


class Executor(base_executor.BaseExecutor):
  """Pushes the model if blessed; see the module docstring."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    model = input_dict[MODEL_KEY][0]
    blessing = input_dict[BLESSING_KEY][0]
    pushed = output_dict[PUSHED_MODEL_KEY][0]
    record: Dict[str, Any] = {'pushed': False}
    if not is_blessed(blessing):
      logging.info('Model %s is not blessed: not pushed.', model.uri)
      pushed.set_int_custom_property('pushed', 0)
    else:
      model_dir = path_utils.serving_model_path(model.uri,
                                                path_utils.is_old_model_artifact(model))
      model_name = exec_properties[MODEL_NAME_KEY]
      extra_files = {}
      if input_dict.get(EVALUATION_KEY):
        extra_files = _warmup_files(model_dir, model_name, input_dict[EVALUATION_KEY][0])
      result = serving_push.push_version(
          model_dir, exec_properties[PUSH_DIR_KEY], model_name,
          keep_versions=int(exec_properties[KEEP_VERSIONS_KEY]),
          canary=bool(exec_properties[CANARY_KEY]), extra_files=extra_files)
      logging.info('Pushed version %d to %s (labels %s; deleted %s).', result.version,
                   result.path, result.labels, result.deleted_versions)
      pushed.set_int_custom_property('pushed', 1)
      pushed.set_string_custom_property('pushed_destination', result.path)
      pushed.set_string_custom_property('pushed_version', str(result.version))
      pushed.set_string_custom_property('version_labels', json.dumps(result.labels))
      record = {'pushed': True, 'version': result.version, 'path': result.path,
                'labels': result.labels, 'deleted_versions': result.deleted_versions,
                'warmup_requests': serving_requests.WARMUP_FILE in extra_files}
    tf.io.gfile.makedirs(pushed.uri)
    with tf.io.gfile.GFile(os.path.join(pushed.uri, PUSH_RECORD_FILE), 'w') as f:
      json.dump(record, f, indent=2, sort_keys=True)


class ServingPusher(base_component.BaseComponent):
  """Pushes a blessed model into `<push_dir>/<model_name>/<version>/` for TF Serving."""
  SPEC_CLASS = ServingPusherSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
               push_dir: str, model_name: str, keep_versions: int = 5, canary: bool = False,
               evaluation: types.BaseChannel = None):
    super().__init__(spec=ServingPusherSpec(
        model=model, model_blessing=model_blessing, evaluation=evaluation,
        pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        **{PUSH_DIR_KEY: push_dir, MODEL_NAME_KEY: model_name,
           KEEP_VERSIONS_KEY: keep_versions, CANARY_KEY: int(canary)}))
