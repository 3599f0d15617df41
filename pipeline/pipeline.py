"""`create_pipeline(config, ...)`: the one TFX pipeline definition both orchestrators run.

A pure function: it builds components from the config and returns a `tfx.dsl.Pipeline`, with
no I/O. Runner-specific choices (metadata store, Beam arguments, pipeline root) come in as
arguments. The graph uses no Resolver node (open-source Kubeflow Pipelines v2 does not run
them).

    LogExampleGen -> StatisticsGen -> ImportSchemaGen | SchemaGen -> StrictExampleValidator
                  -> Transform (after validation) -> Trainer
                  -> ServedBaselineEvaluator -> ServingPusher

The Evaluator's baseline is the model being served, found in the push directory when the
Evaluator runs (components/served_baseline_evaluator.py), not by a Resolver.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tfx import v1 as tfx
from tfx.utils import json_utils
from ml_metadata.proto import metadata_store_pb2

from components.distributed_trainer import DistributedTrainer
from components.log_example_gen import LogExampleGen
from components.served_baseline_evaluator import ServedBaselineEvaluator
from components.serving_pusher import ServingPusher
from components.strict_example_validator import StrictExampleValidator
from pipeline.config import (METRIC_DIRECTIONS, SCORE_METRICS, TASK_METRICS, PipelineConfig,
                             TaskConfig, Threshold, regression_tolerances, score_label)
from trainer.export import SERVING_SIGNATURE
from trainer.models import output_labels, output_weights
from trainer.preprocessing import CONFIG_KEY

PREPROCESSING_FN = 'trainer.preprocessing.preprocessing_fn'
RUN_FN = 'trainer.run.run_fn'


def trainer_properties(config: PipelineConfig) -> Dict[str, Any]:
  """The Trainer's execution properties as create_pipeline sets them and TFX hands them to its
  executor (serialized): for running the Trainer's workers outside the pipeline (a finished
  local run's data, the example Kubernetes jobs in deploy/)."""
  return {
      'train_args': json_format.MessageToJson(
          tfx.proto.TrainArgs(num_steps=config.training.train_steps), sort_keys=True),
      'eval_args': json_format.MessageToJson(
          tfx.proto.EvalArgs(num_steps=config.training.eval_steps), sort_keys=True),
      'custom_config': json_utils.dumps({CONFIG_KEY: config.to_json()}),
      'run_fn': RUN_FN,
  }

# Config metric name (TFMA's metric name) -> TFMA metric class.
METRIC_CLASSES = {
    'auc': 'AUC',
    'binary_crossentropy': 'BinaryCrossentropy',
    'calibration': 'Calibration',
    'mean_prediction': 'MeanPrediction',
    'mean_label': 'MeanLabel',
    'root_mean_squared_error': 'RootMeanSquaredError',
    'mean_absolute_error': 'MeanAbsoluteError',
    'ndcg': 'NDCG',
}


def change_threshold(metric: str, tolerance) -> tfma.GenericChangeThreshold:
  """Candidate minus baseline may be at most `tolerance` worse (absolute, or '2%' relative
  to the baseline's value), in the metric's better direction."""
  higher = METRIC_DIRECTIONS[metric] == 'higher'
  threshold = tfma.GenericChangeThreshold(
      direction=tfma.MetricDirection.HIGHER_IS_BETTER if higher
      else tfma.MetricDirection.LOWER_IS_BETTER)
  if isinstance(tolerance, str):
    allowed = float(tolerance.rstrip('%')) / 100.0
    threshold.relative.value = -allowed if higher else allowed
  else:
    threshold.absolute.value = -tolerance if higher else tolerance
  return threshold


def _metric_config(name: str, thresholds: Mapping[str, Threshold],
                   tolerances: Mapping[str, Any]) -> tfma.MetricConfig:
  """The metric with its threshold and max_regression (a task's or the score's) on the overall
  slice only (a MetricConfig's plain `threshold` would apply to every slice, however small);
  slices are gated by the Evaluator (`evaluation.slice_gate_min_examples`)."""
  metric = tfma.MetricConfig(class_name=METRIC_CLASSES[name])
  threshold = tfma.MetricThreshold()
  bounds = thresholds.get(name)
  if bounds is not None:
    value_threshold = threshold.value_threshold
    if bounds.min is not None:
      value_threshold.lower_bound.value = bounds.min
    if bounds.max is not None:
      value_threshold.upper_bound.value = bounds.max
  tolerance = tolerances.get(name)
  if tolerance is not None:
    # Without a served model TFX "rubber-stamps": change thresholds are dropped.
    threshold.change_threshold.CopyFrom(change_threshold(name, tolerance))
  if threshold.ByteSize():
    metric.per_slice_thresholds.add(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)
  return metric


def build_eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """One MetricsSpec per task output, with that task's thresholds; every output has a label
  (TFMA requires it), including architecture extras such as ESMM's ctr/cvr/ctcvr.

  Labels are read from the raw example columns, in the units the serving outputs have: no
  `preprocessing_function_names` (running the model's `transform_features` signature as well
  only added a second pass over the eval set and transformed features that no metric or slice
  reads; the labels it returned were the raw ones cast to float). `model_type='tf_generic'`:
  TFMA loads the SavedModel with `tf.saved_model.load` and calls `serving_default`, instead of
  loading it as a Keras model three more times (to detect the type, to look for compiled
  metrics - the Trainer compiles none - and for inference); the predictions are the same.

  Slices (`evaluation.slices`) are computed for every metric; thresholds apply to the overall
  slice. The ranking score (`serving.score`) is one more output, with its label and its own
  specs (`_score_specs`). A task with a space is evaluated on its space's rows alone: its
  output's example weight is the column ingestion wrote (`trainer.models.output_weights`), so
  the rows outside (weight 0) count in none of its metrics, `example_count` included (it sums
  the weights). The ranking score ranks every impression and is evaluated on all of them, its
  label reading 0 where its task's label is absent (as ingestion writes it).
  """
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(
          signature_name=SERVING_SIGNATURE,
          model_type=tfma.TF_GENERIC,
          label_keys={**output_labels(config),
                      **({config.serving.score.name: score_label(config)}
                         if config.serving.score else {})},
          example_weight_keys=output_weights(config))],
      slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=list(names))
                                             for names in config.evaluation.slices],
      metrics_specs=[
          tfma.MetricsSpec(
              output_names=[task.name],
              metrics=[tfma.MetricConfig(class_name='ExampleCount')] +
              [_metric_config(name, task.thresholds, regression_tolerances(task))
               for name in TASK_METRICS[task.type]] +
              _plots(task))
          for task in config.tasks
      ] + _esmm_cvr_specs(config) + _score_specs(config))


def _esmm_cvr_specs(config: PipelineConfig) -> List[tfma.MetricsSpec]:
  """ESMM with a space on its conversion task: its `cvr` output (pCVR after a click) is also
  evaluated, on that space, with the binary metrics and no gate (the conversion task's own
  output, pCTCVR, is judged on every impression)."""
  if 'cvr' not in output_weights(config):
    return []
  return [tfma.MetricsSpec(
      output_names=['cvr'],
      metrics=[tfma.MetricConfig(class_name='ExampleCount')] +
      [tfma.MetricConfig(class_name=METRIC_CLASSES[name]) for name in TASK_METRICS['binary']])]


def _score_specs(config: PipelineConfig) -> List[tfma.MetricsSpec]:
  """The ranking score against its label: AUC, mean prediction and label on every slice, and
  with `group_by` NDCG@k over the groups (a spec of its own: TFMA groups its examples by the
  query key, the label column giving the gains)."""
  score = config.serving.score
  if score is None:
    return []
  specs = [tfma.MetricsSpec(
      output_names=[score.name],
      metrics=[tfma.MetricConfig(class_name='ExampleCount')] +
      [_metric_config(name, score.thresholds, score.max_regression)
       for name in SCORE_METRICS if name != 'ndcg'])]
  if score.group_by is not None:
    ndcg = _metric_config('ndcg', score.thresholds, score.max_regression)
    ndcg.config = json.dumps({'gain_key': score_label(config), 'top_k_list': [score.ndcg_k]})
    specs.append(tfma.MetricsSpec(output_names=[score.name], query_key=score.group_by,
                                  metrics=[ndcg]))
  return specs


CALIBRATION_BUCKETS = 20


def _plots(task: TaskConfig) -> List[tfma.MetricConfig]:
  """A binary task's calibration plot: predictions bucketed with their mean label (the run
  report draws calibration and the distribution of predictions from it)."""
  if task.type != 'binary':
    return []
  return [tfma.MetricConfig(class_name='CalibrationPlot',
                            config=f'{{"num_buckets": {CALIBRATION_BUCKETS}}}')]


def push_base_directory(config: PipelineConfig) -> str:
  """TF Serving's model base path: versions go in numbered directories below it."""
  return os.path.join(config.serving.push_dir, config.serving.model_name)


def statistics_history_dir(config: PipelineConfig, state_dir: str) -> str:
  """Where the validator keeps each span's validated statistics, for the next span's drift
  check (a path, so it works without a Resolver on Kubeflow too)."""
  return os.path.join(state_dir, 'statistics_history', config.name)


def create_pipeline(
    config: PipelineConfig,
    pipeline_root: str,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    state_dir: Optional[str] = None,
) -> tfx.dsl.Pipeline:
  """Builds the multi-task training pipeline from a validated config.

  `state_dir` (default: the pipeline root) holds what steps keep across runs outside their
  artifacts: each span's validated statistics.
  """
  config_json = config.to_json()
  data_config_json = config.data_view().to_json()
  example_gen = LogExampleGen(input_base=config.data.input_base, config=config)
  statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs['examples'])
  if config.data.schema:
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.data.schema)
  else:
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs['statistics'],
                                          infer_feature_shape=True)
  example_validator = StrictExampleValidator(
      statistics=statistics_gen.outputs['statistics'],
      schema=schema_gen.outputs['schema'],
      examples=example_gen.outputs['examples'],  # for its span
      drift_thresholds={f.name: f.max_drift for f in config.features if f.max_drift},
      skew_thresholds={f.name: f.max_skew for f in config.features if f.max_skew},
      accept_anomalies=list(config.data.accept_anomalies),
      statistics_history_dir=statistics_history_dir(config, state_dir or pipeline_root))
  # Transform computes no statistics of its own: the raw ones would repeat StatisticsGen's, and
  # in TFX 1.16 the transformed ones wait on a side input after a Flatten of the splits, which
  # the local DirectRunner holds whole in memory (docs/performance.md).
  transform = tfx.components.Transform(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      preprocessing_fn=PREPROCESSING_FN,
      custom_config={CONFIG_KEY: data_config_json},
      disable_statistics=True)
  # Transform does not read the anomalies, but must not start on data that failed validation.
  transform.add_upstream_node(example_validator)
  # TFX's Trainer, on `training.workers` local processes or a Kubeflow TrainJob or TFJob
  # (components/distributed_trainer.py); in-process with one worker.
  trainer = DistributedTrainer(
      run_fn=RUN_FN,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=config.training.train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=config.training.eval_steps),
      custom_config={CONFIG_KEY: config_json}).with_id('Trainer')
  evaluator = ServedBaselineEvaluator(
      examples=example_gen.outputs['examples'],
      model=trainer.outputs['model'],
      eval_config=build_eval_config(config),
      push_dir=config.serving.push_dir if config.serving.compare_with_served else '',
      model_name=config.serving.model_name,
      sample_examples=config.serving.warmup_examples,
      slice_gate_min_examples=config.evaluation.slice_gate_min_examples or 0
  ).with_id('Evaluator')
  pusher = ServingPusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      evaluation=evaluator.outputs['evaluation'],
      push_dir=config.serving.push_dir,
      model_name=config.serving.model_name,
      keep_versions=config.serving.keep_versions,
      canary=config.serving.canary).with_id('Pusher')

  return tfx.dsl.Pipeline(
      pipeline_name=config.name,
      pipeline_root=pipeline_root,
      components=[example_gen, statistics_gen, schema_gen, example_validator, transform,
                  trainer, evaluator, pusher],
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or [])
