"""ServedBaselineEvaluator: TFX's Evaluator, with the model being served as its baseline.

A new model is blessed only if it meets each task's absolute thresholds and no task is worse
than the served model by more than the task's tolerance (TFMA change thresholds). TFX finds a
baseline with a Resolver node (latest blessed model); open-source Kubeflow Pipelines v2 does
not run Resolvers, and "latest blessed" is not necessarily what is served anyway. So the
executor looks at the push directory itself when it runs: the version labelled `stable` in
`models.config` (else the newest version) is copied to a temporary Model artifact and handed
to the Evaluator as `baseline_model`. With nothing served, TFX's rubber stamp applies: change
thresholds are dropped and the model is judged on absolute thresholds alone.

A metric that the eval set cannot define is not a number: TFMA reports AUC 0 when every eval
label of a binary task is one class, and NaN for a calibration without a positive label. The
executor lists such metrics, with the reason, in `undefined_metrics.json` (and the
`undefined_metrics` property); a model whose thresholds or comparison with the served model
read an undefined metric is not blessed (that task could not be evaluated), whatever TFMA's
validation said about the number it made up.

Slices (`evaluation.slices`): TFMA computes every metric per slice for both models; the task
thresholds apply to the whole eval set only. The executor writes `slices.json`: per slice and
task, the eval example count and each metric that has a max_regression, new against served.
With `slice_gate_min_examples`, a slice holding at least that many examples that regresses
beyond the task's max_regression makes the model NOT blessed, naming the slice
(`slice_failures` property); smaller slices, and metrics a slice leaves undefined, are only
reported.

An output the served model does not have (the config gained a task or a ranking score since
it was pushed) is evaluated for the new model alone, on its absolute thresholds: TFMA would
otherwise fail looking for it among the served model's predictions. The evaluation and blessing
list such outputs (`baseline_missing_outputs`); the run summary says they were not compared.

The evaluation artifact records which version was the baseline (`baseline_version`,
`baseline_path`), and `sample_predictions.json`: a few eval examples (serialized) with the
predictions TFMA's PredictionsExtractor made for them. The Pusher turns these into TF Serving
warmup requests; `mtlp serve-check` replays them against the pushed model.
"""

from __future__ import annotations

import base64
import json
import os
import math
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_specs
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import json_utils
from tfx.utils import path_utils
from tfx.utils import proto_utils
from tfx_bsl.public import tfxio

from components import serving_push

PUSH_DIR_KEY = 'push_dir'
MODEL_NAME_KEY = 'model_name'
SAMPLE_EXAMPLES_KEY = 'sample_examples'
SAMPLE_PREDICTIONS_FILE = 'sample_predictions.json'
BASELINE_VERSION_PROPERTY = 'baseline_version'
BASELINE_PATH_PROPERTY = 'baseline_path'
UNDEFINED_METRICS_FILE = 'undefined_metrics.json'
SLICES_FILE = 'slices.json'
SLICE_FAILURES_PROPERTY = 'slice_failures'
SLICE_GATE_MIN_EXAMPLES_KEY = 'slice_gate_min_examples'
UNDEFINED_METRICS_PROPERTY = 'undefined_metrics'
NOT_EVALUATED_PROPERTY = 'not_evaluated'
BASELINE_MISSING_OUTPUTS_PROPERTY = 'baseline_missing_outputs'
SERVING_SIGNATURE = 'serving_default'  # trainer.export.SERVING_SIGNATURE (no trainer import)
CANDIDATE, BASELINE = 'candidate', 'baseline'


OVERALL = ''  # the overall slice's name in `sliced_metric_values`


def slice_name(slice_key: Any) -> str:
  """'device=web', 'device=web, hour=3' for a TFMA SliceKey proto; '' for the overall slice."""
  parts = []
  for key in slice_key.single_slice_keys:
    kind = key.WhichOneof('kind')
    value = getattr(key, kind)
    parts.append(f'{key.column}={value.decode() if isinstance(value, bytes) else value}')
  return ', '.join(parts)


def sliced_metric_values(evaluation_uri: str
                         ) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
  """{slice name: {'candidate' | 'baseline': {output name: {metric name: value}}}}, as TFMA
  wrote them (NaN included); the overall slice is `OVERALL`. Without a baseline TFMA leaves the
  model name empty; that is the candidate."""
  values: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}
  for per_slice in tfma.load_metrics(evaluation_uri):
    models = values.setdefault(slice_name(per_slice.slice_key), {CANDIDATE: {}, BASELINE: {}})
    for kv in per_slice.metric_keys_and_values:
      if kv.key.is_diff or not kv.value.HasField('double_value'):
        continue
      model = BASELINE if kv.key.model_name == BASELINE else CANDIDATE
      models[model].setdefault(kv.key.output_name, {})[kv.key.name] = (
          kv.value.double_value.value)
  return values


def undefined_metrics(values: Mapping[str, Mapping[str, float]]
                      ) -> Dict[str, Dict[str, str]]:
  """{output: {metric: why it is undefined}} for one model's metrics ({output: {metric:
  value}}, TFMA's names). From the labels' counts (`example_count`, `mean_label`), as a
  binary label's mean is exactly 0 or 1 when all its labels are one class; and any value that
  is not a finite number."""
  undefined: Dict[str, Dict[str, str]] = {}
  for output, metrics in values.items():
    count = metrics.get('example_count')
    mean_label = metrics.get('mean_label')
    reasons: Dict[str, str] = {}
    for name, value in metrics.items():
      if name == 'example_count':
        continue
      if count == 0:
        reasons[name] = 'no eval example'
      elif name == 'auc' and mean_label in (0.0, 1.0):
        reasons[name] = (f'every eval label is {mean_label:g} ({count:g} examples): AUC needs '
                         'both classes')
      elif name == 'calibration' and mean_label == 0.0:
        reasons[name] = (f'every eval label is 0 ({count:g} examples): calibration divides by '
                         'the sum of the labels')
      elif not math.isfinite(value):
        reasons[name] = f'TFMA computed {value}'
    if reasons:
      undefined[output] = reasons
  return undefined


def read_undefined_metrics(evaluation_uri: str) -> Dict[str, Dict[str, Dict[str, str]]]:
  """{'candidate' | 'baseline': {output: {metric: reason}}}; empty when none (or an
  evaluation written before the file existed)."""
  path = os.path.join(evaluation_uri, UNDEFINED_METRICS_FILE)
  if not tf.io.gfile.exists(path):
    return {CANDIDATE: {}, BASELINE: {}}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def overall_threshold(metric: tfma.MetricConfig) -> tfma.MetricThreshold:
  """The metric's threshold on the overall slice (the pipeline sets it as a per-slice threshold
  on the overall slice; a plain `threshold` applies to every slice, the overall one included)."""
  for per_slice in metric.per_slice_thresholds:
    if any(spec == tfma.SlicingSpec() for spec in per_slice.slicing_specs):
      return per_slice.threshold
  return metric.threshold


def overall_thresholds(eval_config: tfma.EvalConfig
                       ) -> Dict[str, Dict[str, tfma.MetricThreshold]]:
  """{output: {metric (TFMA's name: AUC -> auc): its threshold on the overall slice}} for every
  metric that has one."""
  thresholds: Dict[str, Dict[str, tfma.MetricThreshold]] = {}
  for spec in eval_config.metrics_specs:
    for metric in spec.metrics:
      threshold = overall_threshold(metric)
      if not threshold.ByteSize():
        continue
      name = metric_specs.metric_instance(metric).name
      for output in spec.output_names:
        thresholds.setdefault(output, {})[name] = threshold
  return thresholds


def gated_metrics(eval_config: tfma.EvalConfig, has_baseline: bool
                  ) -> Dict[str, Dict[str, List[str]]]:
  """{output: {metric: ['threshold' and/or 'vs_served']}}: the checks that decide the
  blessing. Change thresholds count only with a served model (TFX rubber-stamps without)."""
  gated: Dict[str, Dict[str, List[str]]] = {}
  for output, thresholds in overall_thresholds(eval_config).items():
    for name, threshold in thresholds.items():
      checks = []
      if threshold.HasField('value_threshold'):
        checks.append('threshold')
      if has_baseline and threshold.HasField('change_threshold'):
        checks.append('vs_served')
      if checks:
        gated.setdefault(output, {})[name] = checks
  return gated


def _change_passes(change: tfma.GenericChangeThreshold, value: float, baseline: float) -> bool:
  """TFMA's reading of a change threshold (tensorflow_model_analysis/evaluators/
  metrics_validator.py): candidate minus baseline, and that difference relative to the
  baseline (no ratio, so a failure, when the baseline is 0), each no worse than the bound in
  its direction."""
  higher = change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
  diff = value - baseline
  checks = []
  if change.HasField('absolute'):
    checks.append((diff, change.absolute.value))
  if change.HasField('relative'):
    checks.append((math.nan if math.isclose(baseline, 0.0) else diff / baseline,
                   change.relative.value))
  return all(d >= bound if higher else d <= bound for d, bound in checks)


def _finite_or_none(value: Optional[float]) -> Optional[float]:
  return value if value is not None and math.isfinite(value) else None


def judge_slices(sliced: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
                 eval_config: tfma.EvalConfig, min_examples: int) -> Dict[str, Any]:
  """{slice: {output: {'example_count', 'gated', 'checks': {metric: {'value',
  'baseline_value', 'passed' | 'undefined'}}}}} for every slice but the overall one, and the
  lines naming each failed check ('failures'). A slice is gated when the served model was
  evaluated (baseline values present), `min_examples` > 0 and it holds at least that many eval
  examples; its metrics are held to the overall slice's change thresholds (the task's
  max_regression). An undefined metric on a slice (one class of labels) is not gated."""
  changes = {output: {name: t.change_threshold for name, t in thresholds.items()
                      if t.HasField('change_threshold')}
             for output, thresholds in overall_thresholds(eval_config).items()}
  slices: Dict[str, Any] = {}
  failures: List[str] = []
  for name in sorted(n for n in sliced if n != OVERALL):
    models = sliced[name]
    undefined = {model: undefined_metrics(models.get(model, {})) for model in (CANDIDATE,
                                                                               BASELINE)}
    for output, values in sorted(models.get(CANDIDATE, {}).items()):
      served = models.get(BASELINE, {}).get(output, {})
      count = int(values.get('example_count', 0))
      gated = bool(served) and min_examples > 0 and count >= min_examples
      checks = {}
      for metric, change in sorted(changes.get(output, {}).items()):
        check: Dict[str, Any] = {'value': _finite_or_none(values.get(metric)),
                                 'baseline_value': _finite_or_none(served.get(metric))}
        reason = (undefined[CANDIDATE].get(output, {}).get(metric) or
                  undefined[BASELINE].get(output, {}).get(metric))
        if reason or metric not in values or metric not in served:
          check['undefined'] = reason or 'not computed'
        elif gated:
          check['passed'] = _change_passes(change, values[metric], served[metric])
          if not check['passed']:
            failures.append(
                f'{output} on slice {name} ({count} eval examples): {metric} changed by '
                f'{values[metric] - served[metric]:+.4f} against the served model '
                f'({served[metric]:.4f}), more than its max_regression allows')
        checks[metric] = check
      slices.setdefault(name, {})[output] = {'example_count': count, 'gated': gated,
                                             'checks': checks}
  return {'slices': slices, 'failures': failures}


def not_evaluated(undefined: Mapping[str, Mapping[str, Mapping[str, str]]],
                  gated: Mapping[str, Mapping[str, List[str]]]) -> List[str]:
  """One line per task a blessing check could not evaluate: the undefined metric it reads
  and why."""
  lines = []
  for output, metrics in sorted(gated.items()):
    for name, checks in sorted(metrics.items()):
      reason = undefined.get(CANDIDATE, {}).get(output, {}).get(name)
      model = 'the new model'
      if reason is None and 'vs_served' in checks:
        reason = undefined.get(BASELINE, {}).get(output, {}).get(name)
        model = 'the served model'
      if reason is not None:
        lines.append(f'{output} could not be evaluated: {name} of {model} is undefined '
                     f'({reason})')
  return lines


class ServedBaselineEvaluatorSpec(standard_component_specs.EvaluatorSpec):
  PARAMETERS = dict(
      standard_component_specs.EvaluatorSpec.PARAMETERS,
      # Empty: no comparison with a served model.
      **{PUSH_DIR_KEY: component_spec.ExecutionParameter(type=str),
         MODEL_NAME_KEY: component_spec.ExecutionParameter(type=str),
         SAMPLE_EXAMPLES_KEY: component_spec.ExecutionParameter(type=int),
         # 0: slices are reported, not gated.
         SLICE_GATE_MIN_EXAMPLES_KEY: component_spec.ExecutionParameter(type=int,
                                                                        optional=True)})


def read_sample_predictions(evaluation_uri: str) -> Dict[str, Any]:
  """{'examples': [serialized bytes], 'predictions': {output: [[value, ...], ...]}}."""
  with tf.io.gfile.GFile(os.path.join(evaluation_uri, SAMPLE_PREDICTIONS_FILE)) as f:
    data = json.load(f)
  data['examples'] = [base64.b64decode(e) for e in data['examples']]
  return data


def _eval_examples(examples: List[Any], split: str, count: int) -> List[bytes]:
  uri = artifact_utils.get_split_uri(examples, split)
  files = sorted(tf.io.gfile.glob(os.path.join(uri, '*')))
  records: List[bytes] = []
  for path in files:
    for record in tf.data.TFRecordDataset(path, compression_type='GZIP').take(count):
      records.append(record.numpy())
      if len(records) == count:
        return records
  return records


def served_outputs(model_dir: str) -> List[str]:
  """The output names of a SavedModel's serving signature."""
  loaded = tf.saved_model.load(model_dir, tags=['serve'])
  return sorted(loaded.signatures[SERVING_SIGNATURE].structured_outputs)


def without_baseline(eval_config: tfma.EvalConfig, outputs: List[str]) -> tfma.EvalConfig:
  """`eval_config` with the metrics of `outputs` computed for the candidate only (TFMA's
  `MetricsSpec.model_names`) and without change thresholds: the served model has no such
  outputs to compare with."""
  updated = tfma.EvalConfig()
  updated.CopyFrom(eval_config)
  for spec in updated.metrics_specs:
    if not set(spec.output_names) & set(outputs):
      continue
    spec.model_names[:] = [tfma.CANDIDATE_KEY]
    for metric in spec.metrics:
      metric.threshold.ClearField('change_threshold')
      kept = []
      for per_slice in metric.per_slice_thresholds:
        per_slice.threshold.ClearField('change_threshold')
        if per_slice.threshold.ByteSize():
          kept.append(per_slice)
      del metric.per_slice_thresholds[:]
      metric.per_slice_thresholds.extend(kept)
  return updated


class Executor(evaluator_executor.Executor):
  """Evaluates against the served model (if any), then records sample predictions."""

  def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
         exec_properties: Dict[str, Any]) -> None:
    push_dir = exec_properties.get(PUSH_DIR_KEY) or ''
    model_name = exec_properties.get(MODEL_NAME_KEY) or ''
    version = serving_push.served_version(push_dir, model_name) if push_dir else None
    input_dict = dict(input_dict)
    temp_dir = None
    evaluation = output_dict[standard_component_specs.EVALUATION_KEY][0]
    blessing = output_dict[standard_component_specs.BLESSING_KEY][0]
    eval_config = tfma.EvalConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.EVAL_CONFIG_KEY],
                              eval_config)
    if version is not None:
      served_path = os.path.join(push_dir, model_name, str(version))
      temp_dir = tempfile.mkdtemp(prefix='served-baseline-')
      baseline = standard_artifacts.Model()
      baseline.uri = temp_dir
      # Where the Evaluator looks for a Model artifact's SavedModel.
      serving_push.copy_tree(served_path, path_utils.serving_model_dir(temp_dir))
      input_dict[standard_component_specs.BASELINE_MODEL_KEY] = [baseline]
      for artifact in (evaluation, blessing):
        artifact.set_int_custom_property(BASELINE_VERSION_PROPERTY, version)
        artifact.set_string_custom_property(BASELINE_PATH_PROPERTY, served_path)
      missing = sorted({o for spec in eval_config.metrics_specs for o in spec.output_names}
                       - set(served_outputs(served_path)))
      if missing:
        eval_config = without_baseline(eval_config, missing)
        exec_properties = dict(exec_properties)
        exec_properties[standard_component_specs.EVAL_CONFIG_KEY] = proto_utils.proto_to_json(
            eval_config)
        for artifact in (evaluation, blessing):
          artifact.set_string_custom_property(BASELINE_MISSING_OUTPUTS_PROPERTY,
                                              json.dumps(missing))
    try:
      super().Do(input_dict, output_dict, exec_properties)
    finally:
      if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)
    sliced = sliced_metric_values(evaluation.uri)
    self._judge_undefined_metrics(evaluation, blessing, eval_config,
                                  sliced.get(OVERALL, {CANDIDATE: {}, BASELINE: {}}),
                                  has_baseline=version is not None)
    self._judge_slices(evaluation, blessing, eval_config, sliced,
                       int(exec_properties.get(SLICE_GATE_MIN_EXAMPLES_KEY) or 0))
    baseline_id_key = evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY
    if version is not None and baseline_id_key in blessing.mlmd_artifact.custom_properties:
      # TFX records the baseline's ML Metadata id, and its Kubeflow entrypoint turns ids into
      # artifact names (`refactor_model_blessing`): the served copy is no MLMD artifact (id 0,
      # a KeyError there). The version and path above say which model was the baseline.
      del blessing.mlmd_artifact.custom_properties[baseline_id_key]
      # and its URI is that of the temporary copy, gone by now: name the served one.
      blessing.set_string_custom_property(
          evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, served_path)
    count = int(exec_properties.get(SAMPLE_EXAMPLES_KEY) or 0)
    if count:
      self._write_sample_predictions(input_dict, exec_properties, eval_config, evaluation.uri,
                                     count)

  def _judge_undefined_metrics(self, evaluation: types.Artifact, blessing: types.Artifact,
                               eval_config: tfma.EvalConfig,
                               values: Mapping[str, Mapping[str, Mapping[str, float]]],
                               has_baseline: bool) -> None:
    """Writes `undefined_metrics.json` from the overall slice's `values` ({'candidate' |
    'baseline': {output: {metric: value}}}); a blessing that reads an undefined metric becomes
    NOT blessed, naming the task and the reason (`not_evaluated` property)."""
    undefined = {model: undefined_metrics(values[model]) for model in (CANDIDATE, BASELINE)}
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, UNDEFINED_METRICS_FILE), 'w') as f:
      json.dump(undefined, f, indent=2, sort_keys=True)
    evaluation.set_string_custom_property(UNDEFINED_METRICS_PROPERTY,
                                          json.dumps(undefined[CANDIDATE], sort_keys=True))
    lines = not_evaluated(undefined, gated_metrics(eval_config, has_baseline))
    if lines:
      _not_blessed(blessing, NOT_EVALUATED_PROPERTY, lines)

  def _judge_slices(self, evaluation: types.Artifact, blessing: types.Artifact,
                    eval_config: tfma.EvalConfig,
                    sliced: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
                    min_examples: int) -> None:
    """Writes `slices.json` (judge_slices); a slice that regresses beyond its task's
    max_regression makes the model NOT blessed, naming the slice (`slice_failures`)."""
    judged = judge_slices(sliced, eval_config, min_examples)
    with tf.io.gfile.GFile(os.path.join(evaluation.uri, SLICES_FILE), 'w') as f:
      json.dump(judged, f, indent=2, sort_keys=True, allow_nan=False)
    if judged['failures']:
      _not_blessed(blessing, SLICE_FAILURES_PROPERTY, judged['failures'])

  def _write_sample_predictions(self, input_dict: Dict[str, List[Any]],
                                exec_properties: Dict[str, Any],
                                eval_config: tfma.EvalConfig, output_uri: str,
                                count: int) -> None:
    """Runs TFMA's own extractors (features, transform, predictions) on a few eval examples."""
    eval_config = tfma.utils.update_eval_config_with_defaults(
        eval_config, has_baseline=False, rubber_stamp=True)
    model = input_dict[standard_component_specs.MODEL_KEY][0]
    eval_shared_model = tfma.default_eval_shared_model(
        eval_saved_model_path=path_utils.serving_model_path(
            model.uri, path_utils.is_old_model_artifact(model)),
        eval_config=eval_config)
    splits = json_utils.loads(
        exec_properties.get(standard_component_specs.EXAMPLE_SPLITS_KEY, 'null')) or ['eval']
    examples = _eval_examples(input_dict[standard_component_specs.EXAMPLES_KEY], splits[0],
                              count)
    source = tfxio.TFExampleBeamRecord(
        physical_format='inmem', telemetry_descriptors=['mtl-pipeline'],
        raw_record_column_name=tfma.ARROW_INPUT_COLUMN)
    output_path = os.path.join(output_uri, SAMPLE_PREDICTIONS_FILE)
    with self._make_beam_pipeline() as pipeline:
      extracts = (pipeline
                  | 'SampleExamples' >> beam.Create(examples, reshuffle=False)
                  | 'ToRecordBatches' >> source.BeamSource(batch_size=len(examples))
                  | 'ToExtracts' >> tfma.BatchedInputsToExtracts())
      for extractor in tfma.default_extractors(eval_shared_model=eval_shared_model,
                                               eval_config=eval_config):
        extracts = extracts | extractor.stage_name >> extractor.ptransform
      _ = (extracts
           | 'Collect' >> beam.combiners.ToList()
           | 'Write' >> beam.Map(_write_predictions, output_path))


def _not_blessed(blessing: types.Artifact, reason_property: str, lines: List[str]) -> None:
  """Turns the blessing into NOT blessed (whatever TFMA decided), with the reasons."""
  blessing.set_string_custom_property(reason_property, json.dumps(lines))
  blessed_file = os.path.join(blessing.uri, evaluator_constants.BLESSED_FILE_NAME)
  if tf.io.gfile.exists(blessed_file):
    tf.io.gfile.remove(blessed_file)
  with tf.io.gfile.GFile(os.path.join(blessing.uri,
                                      evaluator_constants.NOT_BLESSED_FILE_NAME), 'w') as f:
    f.write('')
  blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                   evaluator_constants.NOT_BLESSED_VALUE)


def read_slices(evaluation_uri: str) -> Dict[str, Any]:
  """What `judge_slices` wrote; empty for an evaluation written before the file existed."""
  path = os.path.join(evaluation_uri, SLICES_FILE)
  if not tf.io.gfile.exists(path):
    return {'slices': {}, 'failures': []}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _write_predictions(extracts: List[Dict[str, Any]], path: str) -> None:
  examples, predictions = [], {}
  for extract in extracts:
    raw = extract[tfma.INPUT_KEY]
    if isinstance(raw, np.ndarray):  # unbatched extracts hold a one-element array
      raw = raw.reshape(-1)[0]
    examples.append(base64.b64encode(bytes(raw)).decode('ascii'))
    outputs = extract[tfma.PREDICTIONS_KEY]
    for name, value in outputs.items():
      predictions.setdefault(name, []).append([float(v) for v in value.reshape(-1)])
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump({'examples': examples, 'predictions': predictions}, f)


class ServedBaselineEvaluator(Evaluator):
  """Evaluator whose baseline is the model currently served from `push_dir`/`model_name`."""
  SPEC_CLASS = ServedBaselineEvaluatorSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, examples, model, eval_config: tfma.EvalConfig, push_dir: str,
               model_name: str, sample_examples: int = 16, slice_gate_min_examples: int = 0):
    """`push_dir` empty: no comparison with a served model (absolute thresholds only).
    `slice_gate_min_examples` 0: slices are reported, not gated."""
    spec = ServedBaselineEvaluatorSpec(
        examples=examples,
        model=model,
        eval_config=eval_config,
        example_splits=json_utils.dumps(None),
        fairness_indicator_thresholds=json_utils.dumps(None),
        evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
        blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        **{PUSH_DIR_KEY: push_dir, MODEL_NAME_KEY: model_name,
           SAMPLE_EXAMPLES_KEY: sample_examples,
           SLICE_GATE_MIN_EXAMPLES_KEY: slice_gate_min_examples})
    # Skip Evaluator.__init__ (it builds its own spec); keep its class for the interface.
    base_beam_component.BaseBeamComponent.__init__(self, spec=spec)

