"""StrictExampleValidator: TFX's ExampleValidator, failing the run when it finds anomalies.

TFX's ExampleValidator records anomalies but lets the pipeline go on. Here an anomaly stops the
run before Transform, with a message that names each feature and its anomaly; the anomalies
artifact is still written first, so the full report stays inspectable in ML Metadata.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.components import ExampleValidator
from tfx.components.example_validator import executor as example_validator_executor
from tfx.components.example_validator import labels
from tfx.dsl.components.base import executor_spec


class DataAnomaliesError(RuntimeError):
  """The examples do not match the schema."""


def describe_anomalies(anomalies: anomalies_pb2.Anomalies) -> List[str]:
  """One line per anomalous feature: `feature: SHORT_DESCRIPTION (description)`."""
  lines = []
  for feature, info in sorted(anomalies.anomaly_info.items()):
    kinds = ', '.join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason)
    lines.append(f'{feature}: {info.short_description} [{kinds}] ({info.description})')
  if anomalies.HasField('dataset_anomaly_info'):
    info = anomalies.dataset_anomaly_info
    lines.append(f'<dataset>: {info.short_description} ({info.description})')
  return lines


class Executor(example_validator_executor.Executor):
  """Validates like ExampleValidator, then raises if any split has anomalies."""

  def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
         exec_properties: Dict[str, Any]):
    self._found: List[str] = []
    result = super().Do(input_dict, output_dict, exec_properties)
    if self._found:
      raise DataAnomaliesError(
          'The examples do not match the schema; the run stops before Transform.\n  ' +
          '\n  '.join(self._found) +
          f'\nFull report: {output_dict["anomalies"][0].uri}')
    return result

  def _Validate(self, inputs: Dict[str, Any], outputs: Dict[str, Any]):
    anomalies = super()._Validate(inputs, outputs)
    # The output path of one split ends in its directory, `Split-<name>`.
    split_dir = os.path.basename(str(outputs[labels.SCHEMA_DIFF_PATH]).rstrip('/'))
    self._found.extend(f'[{split_dir}] {line}' for line in describe_anomalies(anomalies))
    return anomalies


class StrictExampleValidator(ExampleValidator):
  """ExampleValidator whose execution fails when anomalies are found."""
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
