"""StrictExampleValidator: TFX's ExampleValidator, failing the run on anomalies, with drift and
skew checks against earlier data.

TFX's ExampleValidator records anomalies but lets the pipeline go on, and compares only with
the schema. Here:

- an anomaly stops the run before Transform, with a message that names each feature and its
  anomaly (the anomalies artifact is written first, so the full report stays inspectable);
- features with a drift threshold in the config are compared with the statistics of the
  previous span (L-infinity distance for categorical features, Jensen-Shannon divergence for
  numeric ones); features with a skew threshold compare the train split with the eval split;
- anomaly kinds listed in `data.accept_anomalies` are reported but do not stop the run.

The previous span's statistics: after a successful validation the executor keeps a copy of the
statistics it validated under `<history_dir>/<span>/`; the next run compares with the newest
entry for an earlier span. Like the served-model lookup, this needs no Resolver node, so it
works the same on Kubeflow Pipelines. With `data.window_spans > 1` the statistics cover the
window ending at that span.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional

import tensorflow as tf
import tensorflow_data_validation as tfdv
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import types
from tfx.components import ExampleValidator
from tfx.components.example_validator import executor as example_validator_executor
from tfx.components.example_validator import labels
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import json_utils
from tfx.utils import writer_utils

from components import serving_push

DRIFT_KEY = 'drift_thresholds'
SKEW_KEY = 'skew_thresholds'
ACCEPT_KEY = 'accept_anomalies'
HISTORY_KEY = 'statistics_history_dir'
EXAMPLES_KEY = 'examples'  # only read for its span
STATS_FILE = 'FeatureStats.pb'
ACCEPTED_PROPERTY = 'accepted_anomalies'
COMPARED_SPAN_PROPERTY = 'compared_with_span'


class DataAnomaliesError(RuntimeError):
  """The examples do not match the schema, or drifted too far from the previous span."""


def describe_anomalies(anomalies: anomalies_pb2.Anomalies) -> List[str]:
  """One line per anomalous feature: `feature: SHORT_DESCRIPTION [KINDS] (description)`."""
  lines = []
  for feature, info in sorted(anomalies.anomaly_info.items()):
    kinds = ', '.join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason)
    lines.append(f'{feature}: {info.short_description} [{kinds}] ({info.description})')
  if anomalies.HasField('dataset_anomaly_info'):
    info = anomalies.dataset_anomaly_info
    lines.append(f'<dataset>: {info.short_description} ({info.description})')
  return lines


def with_comparators(schema: schema_pb2.Schema, drift: Dict[str, float],
                     skew: Dict[str, float]) -> schema_pb2.Schema:
  """A copy of the schema with drift/skew comparators on the configured features."""
  schema_copy = schema_pb2.Schema()
  schema_copy.CopyFrom(schema)
  for thresholds, field in ((drift, 'drift_comparator'), (skew, 'skew_comparator')):
    for name, threshold in thresholds.items():
      feature = tfdv.get_feature(schema_copy, name)
      comparator = getattr(feature, field)
      if feature.type == schema_pb2.BYTES:
        comparator.infinity_norm.threshold = threshold
      else:
        comparator.jensen_shannon_divergence.threshold = threshold
  return schema_copy


def _span_dirs(history_dir: str) -> Dict[int, str]:
  if not history_dir or not tf.io.gfile.isdir(history_dir):
    return {}
  return {int(name.rstrip('/')): os.path.join(history_dir, name.rstrip('/'))
          for name in tf.io.gfile.listdir(history_dir) if name.rstrip('/').isdigit()}


def previous_span_dir(history_dir: str, span: int) -> Optional[str]:
  """The kept statistics of the newest span before `span`, if any."""
  earlier = {s: d for s, d in _span_dirs(history_dir).items() if s < span}
  return earlier[max(earlier)] if earlier else None


def _load_split(stats_dir: str, split: str) -> Optional[statistics_pb2.DatasetFeatureStatisticsList]:
  path = os.path.join(stats_dir, f'Split-{split}', STATS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  stats = statistics_pb2.DatasetFeatureStatisticsList()
  with tf.io.gfile.GFile(path, 'rb') as f:
    stats.ParseFromString(f.read())
  return stats


def examples_span(examples: List[types.Artifact], stats_artifact: types.Artifact) -> int:
  """The span of the examples the statistics describe. TFX's ExampleGen driver records it as
  a custom property of the examples, which StatisticsGen does not carry over."""
  if examples:
    if examples[0].has_custom_property('span'):
      return examples[0].get_int_custom_property('span')
    return examples[0].span
  return stats_artifact.span


def _keep_statistics(stats_artifact: types.Artifact, span: int, history_dir: str,
                     keep: int = 30) -> None:
  """Copies validated statistics to `<history_dir>/<span>/` (replacing that span's copy)."""
  target = os.path.join(history_dir, str(span))
  staging = f'{target}.staging'
  if tf.io.gfile.exists(staging):
    tf.io.gfile.rmtree(staging)
  for split in artifact_utils.decode_split_names(stats_artifact.split_names):
    src_dir = artifact_utils.get_split_uri([stats_artifact], split)
    serving_push.copy_tree(src_dir, os.path.join(staging, f'Split-{split}'))
  if tf.io.gfile.exists(target):
    tf.io.gfile.rmtree(target)
  tf.io.gfile.rename(staging, target)
  spans = sorted(_span_dirs(history_dir))
  for old in spans[:-keep]:
    tf.io.gfile.rmtree(os.path.join(history_dir, str(old)))


class Executor(example_validator_executor.Executor):
  """Validates like ExampleValidator (plus drift and skew), then raises on anomalies."""

  def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
         exec_properties: Dict[str, Any]):
    self._found: List[str] = []
    self._accepted: List[str] = []
    self._accept = set(json_utils.loads(exec_properties.get(ACCEPT_KEY) or '[]'))
    self._drift = json_utils.loads(exec_properties.get(DRIFT_KEY) or '{}')
    self._skew = json_utils.loads(exec_properties.get(SKEW_KEY) or '{}')
    history_dir = exec_properties.get(HISTORY_KEY) or ''
    stats_artifact = input_dict[standard_component_specs.STATISTICS_KEY][0]
    self._stats_artifact = stats_artifact
    span = examples_span(input_dict.get(EXAMPLES_KEY) or [], stats_artifact)
    self._previous = (previous_span_dir(history_dir, span)
                      if history_dir and self._drift else None)
    anomalies_artifact = output_dict[standard_component_specs.ANOMALIES_KEY][0]
    if self._previous:
      anomalies_artifact.set_int_custom_property(
          COMPARED_SPAN_PROPERTY, int(os.path.basename(self._previous)))
    result = super().Do(input_dict, output_dict, exec_properties)
    if self._accepted:
      anomalies_artifact.set_string_custom_property(ACCEPTED_PROPERTY,
                                                    json.dumps(self._accepted))
      # The result proto carries the artifact back to ML Metadata.
      result.output_artifacts[standard_component_specs.ANOMALIES_KEY].artifacts[0].CopyFrom(
          anomalies_artifact.mlmd_artifact)
      logging.warning('Accepted anomalies (data.accept_anomalies):\n  %s',
                      '\n  '.join(self._accepted))
    if self._found:
      raise DataAnomaliesError(
          'The examples do not match the schema or drifted from the previous span; the run '
          'stops before Transform.\n  ' + '\n  '.join(self._found) +
          f'\nFull report: {anomalies_artifact.uri}' +
          '\nTo go on knowingly, list the anomaly kind in data.accept_anomalies.')
    if history_dir:
      _keep_statistics(stats_artifact, span, history_dir)
    return result

  def _Validate(self, inputs: Dict[str, Any], outputs: Dict[str, Any]):
    # The output path of one split ends in its directory, `Split-<name>`.
    split_dir = os.path.basename(str(outputs[labels.SCHEMA_DIFF_PATH]).rstrip('/'))
    split = split_dir[len('Split-'):]
    schema = with_comparators(inputs[standard_component_specs.SCHEMA_KEY], self._drift,
                              self._skew if split == 'train' else {})
    previous = _load_split(self._previous, split) if self._previous else None
    serving = None
    if self._skew and split == 'train':
      serving = stats_artifact_utils.load_statistics(self._stats_artifact, 'eval').proto()
    anomalies = tfdv.validate_statistics(
        statistics=inputs[standard_component_specs.STATISTICS_KEY],
        schema=schema,
        previous_statistics=previous,
        serving_statistics=serving,
        custom_validation_config=inputs.get(
            standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY))
    writer_utils.write_anomalies(
        os.path.join(outputs[labels.SCHEMA_DIFF_PATH],
                     example_validator_executor.DEFAULT_FILE_NAME), anomalies)
    for feature, info in sorted(anomalies.anomaly_info.items()):
      kinds = {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason}
      line = f'[{split_dir}] ' + describe_anomalies(
          anomalies_pb2.Anomalies(anomaly_info={feature: info}))[0]
      (self._accepted if kinds <= self._accept else self._found).append(line)
    if anomalies.HasField('dataset_anomaly_info'):
      self._found.append(f'[{split_dir}] <dataset>: '
                         f'{anomalies.dataset_anomaly_info.description}')
    return anomalies


class StrictExampleValidatorSpec(standard_component_specs.ExampleValidatorSpec):
  INPUTS = dict(
      standard_component_specs.ExampleValidatorSpec.INPUTS,
      **{EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples,
                                                       optional=True)})
  PARAMETERS = dict(
      standard_component_specs.ExampleValidatorSpec.PARAMETERS,
      **{DRIFT_KEY: component_spec.ExecutionParameter(type=str),
         SKEW_KEY: component_spec.ExecutionParameter(type=str),
         ACCEPT_KEY: component_spec.ExecutionParameter(type=str),
         HISTORY_KEY: component_spec.ExecutionParameter(type=str)})


class StrictExampleValidator(ExampleValidator):
  """ExampleValidator whose execution fails on anomalies; drift/skew per configured feature."""
  SPEC_CLASS = StrictExampleValidatorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, statistics: types.BaseChannel, schema: types.BaseChannel,
               examples: Optional[types.BaseChannel] = None,
               drift_thresholds: Optional[Dict[str, float]] = None,
               skew_thresholds: Optional[Dict[str, float]] = None,
               accept_anomalies: Optional[List[str]] = None,
               statistics_history_dir: str = ''):
    spec = StrictExampleValidatorSpec(
        statistics=statistics,
        schema=schema,
        examples=examples,
        exclude_splits=json_utils.dumps([]),
        anomalies=types.Channel(type=standard_artifacts.ExampleAnomalies),
        **{DRIFT_KEY: json.dumps(drift_thresholds or {}, sort_keys=True),
           SKEW_KEY: json.dumps(skew_thresholds or {}, sort_keys=True),
           ACCEPT_KEY: json.dumps(sorted(accept_anomalies or [])),
           HISTORY_KEY: statistics_history_dir})
    # Skip ExampleValidator.__init__ (it builds its own spec); keep its class for the interface.
    base_component.BaseComponent.__init__(self, spec=spec)
