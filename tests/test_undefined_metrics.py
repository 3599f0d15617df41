"""Metrics the eval set cannot define (a binary task whose eval labels are all one class) are
reported as undefined, with the reason, and the model is not blessed: through the real
Evaluator (TFMA) on the shared run's model, against the model it served."""

import glob
import json
import os
import shutil

import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components.served_baseline_evaluator import (BASELINE, CANDIDATE, ServedBaselineEvaluator,
                                                  not_evaluated, undefined_metrics)
from conftest import output_uri, run_components
from pipeline.pipeline import build_eval_config
from pipeline.run_summary import build_summary, format_table, write_summary


def test_undefined_metrics_follow_from_the_label_counts():
  values = {
      'click': {'example_count': 50.0, 'mean_label': 0.0, 'auc': 0.0, 'calibration': float('nan'),
                'binary_crossentropy': 0.3, 'mean_prediction': 0.2},
      'conversion': {'example_count': 50.0, 'mean_label': 1.0, 'auc': 1.0, 'calibration': 0.9},
      'dwell': {'example_count': 50.0, 'mean_label': 3.0, 'root_mean_squared_error': float('inf')},
      'late': {'example_count': 0.0, 'mean_label': float('nan'), 'auc': 0.0},
      'fine': {'example_count': 50.0, 'mean_label': 0.3, 'auc': 0.7, 'calibration': 1.1},
  }
  undefined = undefined_metrics(values)
  assert set(undefined) == {'click', 'conversion', 'dwell', 'late'}
  assert set(undefined['click']) == {'auc', 'calibration'}
  assert 'every eval label is 0 (50 examples): AUC needs both classes' == undefined['click']['auc']
  assert set(undefined['conversion']) == {'auc'}  # all 1: calibration (mean pred / 1) is defined
  assert undefined['dwell'] == {'root_mean_squared_error': 'TFMA computed inf'}
  assert undefined['late'] == {'mean_label': 'no eval example', 'auc': 'no eval example'}
  # Only the checks that decide the blessing are reported; the served model's side counts for
  # comparisons only.
  gated = {'click': {'auc': ['threshold']}, 'fine': {'auc': ['vs_served']}}
  both = {CANDIDATE: {'click': {'auc': 'x'}}, BASELINE: {'fine': {'auc': 'y'}}}
  assert not_evaluated(both, gated) == [
      'click could not be evaluated: auc of the new model is undefined (x)',
      'fine could not be evaluated: auc of the served model is undefined (y)']
  assert not_evaluated({CANDIDATE: {'click': {'calibration': 'x'}}, BASELINE: {}}, gated) == []


def _one_class_eval_split(e2e_run, dest, label, value):
  """The shared run's eval split with `label` set to `value` on every example."""
  source = os.path.join(output_uri(e2e_run, 'LogExampleGen', 'examples'), 'Split-eval')
  os.makedirs(dest / 'Split-eval')
  for path in sorted(glob.glob(os.path.join(source, '*.gz'))):
    with tf.io.TFRecordWriter(str(dest / 'Split-eval' / os.path.basename(path)),
                              options='GZIP') as writer:
      for record in tf.data.TFRecordDataset(path, compression_type='GZIP'):
        example = tf.train.Example.FromString(record.numpy())
        example.features.feature[label].int64_list.value[:] = [value]
        writer.write(example.SerializeToString())


@pytest.fixture(scope='module')
def one_class_evaluation(e2e_run, tmp_path_factory):
  """The Evaluator, as the pipeline builds it, on the shared run's model and an eval split
  where every click is 0, with the shared run's pushed model served as the baseline."""
  root = tmp_path_factory.mktemp('one_class')
  _one_class_eval_split(e2e_run, root / 'examples', 'click', 0)
  shutil.copytree(e2e_run['root'] / 'serving', root / 'serving')
  config = e2e_run['config'].with_overrides(serving={'push_dir': str(root / 'serving')})
  examples = tfx.dsl.Importer(
      source_uri=str(root / 'examples'), artifact_type=tfx.types.standard_artifacts.Examples,
      properties={'split_names': '["eval"]'},
      custom_properties={'payload_format': 'FORMAT_TF_EXAMPLE',
                         'file_format': 'tfrecords_gzip'}).with_id('EvalExamples')
  model = tfx.dsl.Importer(
      source_uri=output_uri(e2e_run, 'Trainer', 'model'),
      artifact_type=tfx.types.standard_artifacts.Model).with_id('Model')
  evaluator = ServedBaselineEvaluator(
      examples=examples.outputs['result'], model=model.outputs['result'],
      eval_config=build_eval_config(config), push_dir=config.serving.push_dir,
      model_name=config.serving.model_name, sample_examples=0).with_id('Evaluator')
  run_dir = root / 'run'
  store = run_components(config, run_dir, [examples, model, evaluator])
  summary = build_summary(config, store)
  with open(write_summary(summary, str(run_dir))) as f:
    text = f.read()
  return {'summary': summary, 'text': text, 'e2e': e2e_run['summary']}


def test_one_class_labels_give_undefined_metrics_not_numbers(one_class_evaluation):
  click = one_class_evaluation['summary']['tasks']['click']
  assert click['metrics']['auc'] is None  # TFMA computes 0.0
  assert click['metrics']['calibration'] is None  # TFMA computes NaN
  assert click['metrics']['mean_label'] == 0.0
  assert click['undefined_metrics']['auc'].startswith('every eval label is 0 (')
  assert click['undefined_metrics']['auc'].endswith('AUC needs both classes')
  assert click['thresholds']['auc']['passed'] is False
  assert 'AUC needs both classes' in click['thresholds']['auc']['undefined']
  # the served model's AUC on these labels is just as undefined
  assert click['baseline_metrics']['auc'] is None
  assert click['vs_served']['auc']['passed'] is False
  # the other tasks are evaluated as usual
  dwell = one_class_evaluation['summary']['tasks']['dwell']
  assert dwell['undefined_metrics'] == {}
  assert dwell['metrics']['root_mean_squared_error'] > 0


def test_a_task_that_cannot_be_evaluated_is_not_blessed_and_says_so(one_class_evaluation):
  summary = one_class_evaluation['summary']
  assert one_class_evaluation['e2e']['blessed']  # the same model, on the real labels
  assert summary['blessed'] is False
  reasons = summary['not_blessed_because']
  assert reasons[0].startswith('click could not be evaluated: auc of the new model is '
                               'undefined (every eval label is 0'), reasons
  assert not any('click: auc' in r and 'failed its threshold' in r for r in reasons), reasons
  assert 'undefined' in format_table(summary)


def test_the_run_summary_is_strict_json(one_class_evaluation):
  def refuse(constant):
    raise AssertionError(f'{constant} in run_summary.json')
  assert json.loads(one_class_evaluation['text'], parse_constant=refuse)
