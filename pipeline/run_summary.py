"""`run_summary.json`: what one pipeline run did, read back from ML Metadata and its artifacts.

Per task: eval metrics (TFMA's names), thresholds and whether each passed, the learned sigma and
effective loss weight. Also whether the model was blessed (and which thresholds failed), the
pushed version and path, ingestion counts with quarantined records by reason, and the wall
seconds of each component.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional

import tensorflow as tf
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components.log_example_gen import read_counts
from components.served_baseline_evaluator import (BASELINE, BASELINE_MISSING_OUTPUTS_PROPERTY,
                                                  CANDIDATE, NOT_EVALUATED_PROPERTY,
                                                  OVERALL, SLICE_FAILURES_PROPERTY,
                                                  read_slices, read_undefined_metrics,
                                                  sliced_metric_values)
from components.serving_pusher import PUSH_RECORD_FILE
from pipeline.config import PipelineConfig, TaskConfig, regression_tolerances, score_label
from trainer.models import output_weights
from trainer.run import TRAINING_SUMMARY_FILE

SUMMARY_FILE = 'run_summary.json'
_STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def _latest_run_context(store: metadata_store.MetadataStore, pipeline_name: str
                        ) -> metadata_store_pb2.Context:
  pipeline_contexts = store.get_contexts_by_type('pipeline')
  pipeline_ids = {c.id for c in pipeline_contexts if c.name == pipeline_name}
  runs = []
  for run in store.get_contexts_by_type('pipeline_run'):
    parents = store.get_parent_contexts_by_context(run.id)
    if not parents or any(p.id in pipeline_ids for p in parents):
      runs.append(run)
  if not runs:
    raise RuntimeError(f'no run of pipeline {pipeline_name!r} in ML Metadata')
  return max(runs, key=lambda c: (c.create_time_since_epoch, c.id))


def read_run(store: metadata_store.MetadataStore, pipeline_name: str) -> Dict[str, Any]:
  """{node id: {'state', 'seconds', 'outputs': {key: [artifact]}}} of the latest run."""
  run = _latest_run_context(store, pipeline_name)
  executions = store.get_executions_by_context(run.id)
  node_of: Dict[int, str] = {}
  for node in store.get_contexts_by_type('node'):
    for execution in store.get_executions_by_context(node.id):
      node_of[execution.id] = node.name.split('.', 1)[-1]
  result: Dict[str, Any] = {'run_id': run.name, 'nodes': {}}
  for execution in executions:
    events = store.get_events_by_execution_ids([execution.id])
    outputs: Dict[str, List[int]] = {}
    for event in events:
      if event.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT):
        key = event.path.steps[0].key if event.path.steps else ''
        outputs.setdefault(key, []).append(event.artifact_id)
    artifacts = {a.id: a for a in store.get_artifacts_by_id(
        [i for ids in outputs.values() for i in ids])}
    result['nodes'][node_of.get(execution.id, str(execution.id))] = {
        'state': _STATE_NAMES.get(execution.last_known_state, 'UNKNOWN'),
        'seconds': round((execution.last_update_time_since_epoch -
                          execution.create_time_since_epoch) / 1000.0, 2),
        'started': execution.create_time_since_epoch / 1000.0,  # epoch seconds
        'ended': execution.last_update_time_since_epoch / 1000.0,
        'outputs': {k: [artifacts[i] for i in ids] for k, ids in outputs.items()},
    }
  return result


def _custom(artifact: metadata_store_pb2.Artifact, key: str) -> Any:
  if key not in artifact.custom_properties:
    return None
  value = artifact.custom_properties[key]
  kind = value.WhichOneof('value')
  if kind == 'struct_value':
    return json_format.MessageToDict(value.struct_value)
  return getattr(value, kind)


def _output(node: Optional[Dict[str, Any]], key: str) -> Optional[metadata_store_pb2.Artifact]:
  if not node or not node['outputs'].get(key):
    return None
  return node['outputs'][key][0]


def _split_counts(statistics: metadata_store_pb2.Artifact) -> Dict[str, int]:
  artifact = standard_artifacts.ExampleStatistics()
  artifact.set_mlmd_artifact(statistics)
  counts = {}
  for split in artifact_utils.decode_split_names(artifact.split_names):
    stats = stats_artifact_utils.load_statistics(artifact, split).proto()
    counts[split] = int(stats.datasets[0].num_examples) if stats.datasets else 0
  return counts


def _eval_metrics(evaluation_uri: str
                  ) -> Dict[str, Dict[str, Dict[str, Dict[str, Optional[float]]]]]:
  """{slice: {'candidate' | 'baseline': {output name: {metric name: value}}}}, the overall
  slice `OVERALL`; a metric the eval set leaves undefined on the overall slice
  (served_baseline_evaluator.undefined_metrics) is None, never the number TFMA made up (AUC 0
  on one class, NaN); on the other slices, non-finite values are None (`slices.json` says which
  are undefined and why)."""
  sliced = sliced_metric_values(evaluation_uri)
  sliced.setdefault(OVERALL, {CANDIDATE: {}, BASELINE: {}})
  undefined = read_undefined_metrics(evaluation_uri)
  return {name: {model: {output: {
      metric: None if (name == OVERALL and metric in undefined.get(model, {}).get(output, {}))
      or not math.isfinite(value) else value for metric, value in metrics.items()}
                         for output, metrics in outputs.items()}
                 for model, outputs in values.items()}
          for name, values in sliced.items()}


def _task_slices(task: str, sliced: Dict[str, Any], judged: Dict[str, Any]
                 ) -> List[Dict[str, Any]]:
  """Each slice of the task: its eval example count, metrics next to the served model's, and
  whether it was gated and passed (the Evaluator's `slices.json`)."""
  rows = []
  for name in sorted(n for n in sliced if n != OVERALL):
    values = sliced[name]
    if task not in values[CANDIDATE]:
      continue
    judgement = judged.get(name, {}).get(task, {})
    checks = judgement.get('checks', {})
    rows.append({
        'slice': name,
        'example_count': judgement.get('example_count',
                                       values[CANDIDATE][task].get('example_count')),
        'metrics': values[CANDIDATE][task],
        'baseline_metrics': values[BASELINE].get(task, {}),
        'gated': bool(judgement.get('gated')),
        'passed': (all(c.get('passed', True) for c in checks.values())
                   if judgement.get('gated') else None),
        'failed': sorted(m for m, c in checks.items() if c.get('passed') is False),
        'undefined': {m: c['undefined'] for m, c in checks.items() if 'undefined' in c},
    })
  return rows


def _failed_thresholds(evaluation_uri: str) -> List[Dict[str, Any]]:
  """Each failed check: task, metric, check ('threshold' or 'vs_served'), value, message."""
  result = tfma.load_validation_result(evaluation_uri)
  failures = []
  for per_slice in result.metric_validations_per_slice:
    for failure in per_slice.failures:
      is_change = failure.metric_threshold.HasField('change_threshold')
      failures.append({'task': failure.metric_key.output_name,
                       'metric': failure.metric_key.name,
                       'check': 'vs_served' if is_change else 'threshold',
                       'value': failure.metric_value.double_value.value,
                       'message': failure.message})
  return failures


def _describe_failure(failure: Dict[str, Any], baseline: Dict[str, Dict[str, float]]) -> str:
  task, metric = failure['task'], failure['metric']
  if failure['check'] == 'vs_served':
    served = baseline.get(task, {}).get(metric)
    return (f'{task}: {metric} changed by {failure["value"]:+.4f} against the served model '
            f'({served:.4f}), more than its max_regression allows'
            if served is not None else f'{task}: {metric} worse than the served model')
  return f'{task}: {metric} = {failure["value"]:.4f} failed its threshold'


def build_summary(config: PipelineConfig, store: metadata_store.MetadataStore) -> Dict[str, Any]:
  """Reads the latest run of the config's pipeline and assembles the run summary."""
  run = read_run(store, config.name)
  nodes = run['nodes']
  summary: Dict[str, Any] = {
      'pipeline': config.name,
      'run_id': run['run_id'],
      'components': {name: {'state': n['state'], 'wall_seconds': n['seconds']}
                     for name, n in nodes.items()},
  }

  quarantine = _output(nodes.get('LogExampleGen'), 'quarantine')
  if quarantine is not None:
    counts = read_counts(quarantine.uri)
    summary['ingestion'] = dict(counts, quarantine_uri=quarantine.uri)
  statistics = _output(nodes.get('StatisticsGen'), 'statistics')
  if statistics is not None:
    summary.setdefault('ingestion', {})['examples_by_split'] = _split_counts(statistics)

  training: Dict[str, Any] = {}
  model_run = _output(nodes.get('Trainer'), 'model_run')
  if model_run is not None:
    path = os.path.join(model_run.uri, TRAINING_SUMMARY_FILE)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        training = json.load(f)

  evaluation = _output(nodes.get('Evaluator'), 'evaluation')
  sliced = (_eval_metrics(evaluation.uri) if evaluation is not None
            else {OVERALL: {CANDIDATE: {}, BASELINE: {}}})
  metrics, baseline = sliced[OVERALL][CANDIDATE], sliced[OVERALL][BASELINE]
  judged_slices = (read_slices(evaluation.uri)['slices'] if evaluation is not None else {})
  undefined = (read_undefined_metrics(evaluation.uri) if evaluation is not None
               else {CANDIDATE: {}, BASELINE: {}})
  blessing = _output(nodes.get('Evaluator'), 'blessing')
  blessed = bool(_custom(blessing, 'blessed')) if blessing is not None else False
  baseline_version = _custom(evaluation, 'baseline_version') if evaluation is not None else None

  def why_undefined(task: str, metric: str, check: str) -> Optional[str]:
    reason = undefined[CANDIDATE].get(task, {}).get(metric)
    if reason is None and check == 'vs_served':
      reason = undefined[BASELINE].get(task, {}).get(metric)
      reason = reason and f'served model: {reason}'
    return reason

  # TFMA's verdict on a number it made up for an undefined metric is no verdict: such checks
  # are reported as undefined (and the Evaluator did not bless), not as failed thresholds.
  failures = [f for f in (_failed_thresholds(evaluation.uri) if evaluation is not None else [])
              if why_undefined(f['task'], f['metric'], f['check']) is None]

  # Outputs the served model lacks (a task or score added since): evaluated, not compared.
  missing = json.loads(_custom(evaluation, BASELINE_MISSING_OUTPUTS_PROPERTY) or '[]'
                       ) if evaluation is not None else []

  def judged(output: str, bounds: Mapping[str, Any], tolerances: Mapping[str, Any]
             ) -> Dict[str, Any]:
    """An output's metrics next to the served model's, and its checks: thresholds,
    max_regression against the served model, slices."""
    values = metrics.get(output, {})
    served = baseline.get(output, {})
    failed = {(f['metric'], f['check']) for f in failures if f['task'] == output}
    thresholds = {}
    for name, bound in bounds.items():
      thresholds[name] = {'min': bound.min, 'max': bound.max, 'value': values.get(name),
                          'passed': (name, 'threshold') not in failed and
                                    values.get(name) is not None}
      reason = why_undefined(output, name, 'threshold')
      if reason:
        thresholds[name]['undefined'] = reason
    vs_served = {}
    for name, tolerance in tolerances.items():
      reason = why_undefined(output, name, 'vs_served')
      vs_served[name] = {
          'max_regression': tolerance,
          'value': values.get(name),
          'baseline_value': served.get(name),
          # None: nothing served to compare with (judged on thresholds alone).
          'passed': (None if baseline_version is None or output in missing
                     else (name, 'vs_served') not in failed and reason is None)}
      if output in missing and baseline_version is not None:
        vs_served[name]['not_compared'] = f'the served version has no output {output!r}'
      elif reason and baseline_version is not None:
        vs_served[name]['undefined'] = reason
    return {
        'metrics': values,
        'undefined_metrics': undefined[CANDIDATE].get(output, {}),
        'baseline_metrics': served,
        'thresholds': thresholds,
        'vs_served': vs_served,
        'failed_checks': sorted(f'{check}:{metric}' for metric, check in failed),
        'slices': _task_slices(output, sliced, judged_slices),
    }

  ingestion = summary.get('ingestion', {})
  space_rows = ingestion.get('task_rows_by_split', {})
  weighted = output_weights(config)

  def rows(task: TaskConfig) -> Optional[Dict[str, int]]:
    """{split: examples its loss and metrics read}: its space's, or every example."""
    if task.name in weighted:
      return space_rows.get(task.name)
    return ingestion.get('examples_by_split')

  tasks = {}
  for task in config.tasks:
    learned = training.get('tasks', {}).get(task.name, {})
    tasks[task.name] = {
        'type': task.type,
        'label': task.label,
        'space': task.space_text,
        'rows': rows(task),
        **judged(task.name, task.thresholds, regression_tolerances(task)),
        'sigma': learned.get('sigma'),
        'loss_weight': learned.get('loss_weight'),
        'sigma_by_epoch': learned.get('sigma_by_epoch', []),
        'loss_weight_by_epoch': learned.get('loss_weight_by_epoch', []),
        'train_loss_by_epoch': learned.get('train_loss_by_epoch', []),
        'eval_loss_by_epoch': learned.get('eval_loss_by_epoch', []),
    }
  if 'cvr' in weighted:  # ESMM: pCVR on the conversion task's space
    conversion = config.model.esmm_conversion_task
    tasks[conversion]['cvr'] = {'metrics': metrics.get('cvr', {}),
                                'baseline_metrics': baseline.get('cvr', {}),
                                'rows': space_rows.get(conversion)}
  summary['tasks'] = tasks
  score = config.serving.score
  summary['score'] = None if score is None else {
      'name': score.name, 'combine': score.combine, 'weights': dict(score.weights),
      'label': score_label(config), 'group_by': score.group_by,
      'ndcg_k': score.ndcg_k if score.group_by else None,
      **judged(score.name, score.thresholds, score.max_regression)}
  summary['blessed'] = blessed
  summary['baseline'] = ({'version': baseline_version,
                          'path': _custom(evaluation, 'baseline_path'),
                          'missing_outputs': missing}
                         if baseline_version is not None else None)
  not_evaluated = json.loads(_custom(blessing, NOT_EVALUATED_PROPERTY) or '[]'
                             ) if blessing is not None else []
  slice_failures = json.loads(_custom(blessing, SLICE_FAILURES_PROPERTY) or '[]'
                              ) if blessing is not None else []
  summary['not_blessed_because'] = not_evaluated + [
      _describe_failure(f, baseline) for f in failures] + slice_failures if not blessed else []
  if evaluation is None:
    summary['not_blessed_because'] = ['the Evaluator did not run']

  pushed = _output(nodes.get('Pusher'), 'pushed_model')
  summary['push'] = {'pushed': False}
  if pushed is not None:
    record_path = os.path.join(pushed.uri, PUSH_RECORD_FILE)
    if tf.io.gfile.exists(record_path):
      with tf.io.gfile.GFile(record_path) as f:
        summary['push'] = json.load(f)
  exported = training.get('exported', {})
  summary['training'] = {'train_steps': config.training.train_steps,
                         'loss_weighting': config.training.loss_weighting,
                         'gradient_surgery': config.training.gradient_surgery,
                         'model_type': config.model.type,
                         # which epoch's weights were exported, and why (early stopping)
                         'exported_epoch': exported.get('exported_epoch'),
                         'exported_because': exported.get('reason'),
                         'early_stopping': ({k: v for k, v in exported.items()
                                             if k not in ('exported_epoch', 'reason')}
                                            or None),
                         'eval_loss_by_epoch': training.get('eval_loss_by_epoch', [])}
  summary['artifacts'] = {key: artifact.uri for key, artifact in (
      ('model_run', model_run), ('evaluation', evaluation), ('pushed_model', pushed))
                          if artifact is not None}
  summary['total_wall_seconds'] = round(sum(n['seconds'] for n in nodes.values()), 2)
  return finite(summary)


def finite(value: Any) -> Any:
  """`value` with every NaN or infinite float replaced by None (JSON has no such numbers:
  strict parsers reject a file holding a bare NaN)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  return value


def _shown(value: Optional[float], check: Dict[str, Any]) -> str:
  if value is not None:
    return f'{value:.4f}'
  return 'undefined' if check.get('undefined') else 'n/a'


def judged_outputs(summary: Dict[str, Any]) -> Dict[str, Any]:
  """Every judged output of a summary: the tasks, then the ranking score under its name."""
  score = summary.get('score')
  return {**summary.get('tasks', {}), **({score['name']: score} if score else {})}


def format_table(summary: Dict[str, Any]) -> str:
  """The per-task table printed at the end of a run (the ranking score last, by its name)."""
  lines = [f'{"task":<12} {"metric":<34} {"value":>10} {"threshold":>16}  passed',
           '-' * 82]
  for task_name, task in judged_outputs(summary).items():
    shown = set()
    for metric, t in task['thresholds'].items():
      bound = ' '.join(p for p in (f'>={t["min"]:g}' if t['min'] is not None else '',
                                   f'<={t["max"]:g}' if t['max'] is not None else '') if p)
      value = t['value']
      lines.append(f'{task_name:<12} {metric:<34} '
                   f'{_shown(value, t):>10} {bound:>16}  '
                   f'{"yes" if t["passed"] else "NO"}')
      shown.add(metric)
    for metric, check in task.get('vs_served', {}).items():
      if check['passed'] is None:
        continue
      value, served = check['value'], check['baseline_value']
      allowed = f'served {_shown(served, check)}'
      lines.append(f'{task_name:<12} {metric + " vs served":<34} '
                   f'{_shown(value, check):>10} {allowed:>16}  '
                   f'{"yes" if check["passed"] else "NO"}')
    for metric in ('auc', 'root_mean_squared_error', 'ndcg'):
      if metric in task['metrics'] and metric not in shown:
        value = task['metrics'][metric]
        lines.append(f'{task_name:<12} {metric:<34} '
                     f'{(f"{value:.4f}" if value is not None else "undefined"):>10} '
                     f'{"-":>16}  -')
    for row in task.get('slices', []):
      for metric in row['failed']:
        lines.append(f'{task_name:<12} {(metric + " on " + row["slice"])[:34]:<34} '
                     f'{_shown(row["metrics"].get(metric), {}):>10} '
                     f'{"served " + _shown(row["baseline_metrics"].get(metric), {}):>16}  NO')
    if task.get('sigma') is not None:
      lines.append(f'{task_name:<12} {"learned sigma / weight":<34} {task["sigma"]:>10.4f} '
                   f'{"weight " + format(task["loss_weight"], ".4f"):>16}')
  return '\n'.join(lines)


def write_summary(summary: Dict[str, Any], output_dir: str) -> str:
  path = os.path.join(output_dir, SUMMARY_FILE)
  with open(path, 'w') as f:
    json.dump(finite(summary), f, indent=2, sort_keys=True, default=str, allow_nan=False)
  return path
