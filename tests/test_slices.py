"""Slice-level evaluation (`evaluation.slices`) and the slice gate
(`evaluation.slice_gate_min_examples`): through the real Evaluator (TFMA) on the shared run's
served model and a candidate that is worse on one device only, and the gate's rule on its own."""

import dataclasses
import shutil

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score
from tfx import v1 as tfx

from components.served_baseline_evaluator import (BASELINE, CANDIDATE, OVERALL,
                                                  ServedBaselineEvaluator, judge_slices)
from conftest import eval_rows, output_uri, run_components
from pipeline.pipeline import build_eval_config
from pipeline.report import render
from pipeline.run_summary import build_summary, format_table
from trainer.export import SERVING_SIGNATURE

WORSE_DEVICE = 'web'  # 15% of the sample log's impressions
MIN_EXAMPLES = 50


def _served_model_dir(e2e_run):
  version = e2e_run['summary']['push']['version']
  return str(e2e_run['root'] / 'serving' / e2e_run['config'].serving.model_name / str(version))


class _WorseOnOneDevice(tf.Module):
  """The served model, with its click predictions shuffled among the rows of one device in
  each batch: the same predictions overall (the same distribution, also on that device), no
  longer ranked by the click on that device; unchanged on every other device."""

  def __init__(self, served_dir: str):
    super().__init__()
    self.served = tf.saved_model.load(served_dir)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
  def serve(self, examples):
    outputs = dict(self.served.signatures[SERVING_SIGNATURE](examples=examples))
    device = tf.io.parse_example(examples, {'device': tf.io.FixedLenFeature(
        [], tf.string, default_value='')})['device']
    rows = tf.where(tf.equal(device, WORSE_DEVICE))
    order = tf.argsort(tf.random.stateless_uniform([tf.shape(rows)[0]], seed=[7, 11]))
    click = outputs['click']
    outputs['click'] = tf.tensor_scatter_nd_update(
        click, rows, tf.gather(tf.gather_nd(click, rows), order))
    return outputs


def _eval_rows(e2e_run):
  """The eval split's serialized examples with their device and click label."""
  records, values = eval_rows(e2e_run, ('device', 'click'))
  return records, values['device'], values['click']


@pytest.fixture(scope='module')
def sliced_evaluation(e2e_run, tmp_path_factory):
  """The Evaluator, as the pipeline builds it with slices by device and device x segment and a
  slice gate of 50 examples, on the candidate worse on `web`, with the shared run's pushed
  model served as the baseline. A click AUC may regress by 0.05 (overall and per slice)."""
  root = tmp_path_factory.mktemp('slices')
  shutil.copytree(e2e_run['root'] / 'serving', root / 'serving')
  candidate = root / 'candidate'
  module = _WorseOnOneDevice(_served_model_dir(e2e_run))
  tf.saved_model.save(module, str(candidate / 'Format-Serving'),
                      signatures={SERVING_SIGNATURE: module.serve})
  config = e2e_run['config'].with_overrides(
      serving={'push_dir': str(root / 'serving')},
      evaluation={'slices': ['device', ['device', 'user_segment']],
                  'slice_gate_min_examples': MIN_EXAMPLES})
  config = dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, max_regression={'auc': 0.05}) if t.name == 'click' else t
      for t in config.tasks))
  examples = tfx.dsl.Importer(
      source_uri=output_uri(e2e_run, 'LogExampleGen', 'examples'),
      artifact_type=tfx.types.standard_artifacts.Examples,
      properties={'split_names': '["eval", "train"]'},
      custom_properties={'payload_format': 'FORMAT_TF_EXAMPLE',
                         'file_format': 'tfrecords_gzip'}).with_id('Examples')
  model = tfx.dsl.Importer(
      source_uri=str(candidate),
      artifact_type=tfx.types.standard_artifacts.Model).with_id('Model')
  evaluator = ServedBaselineEvaluator(
      examples=examples.outputs['result'], model=model.outputs['result'],
      eval_config=build_eval_config(config), push_dir=config.serving.push_dir,
      model_name=config.serving.model_name, sample_examples=0,
      slice_gate_min_examples=config.evaluation.slice_gate_min_examples).with_id('Evaluator')
  store = run_components(config, root / 'run', [examples, model, evaluator])
  return {'summary': build_summary(config, store), 'config': config}


def _slices(summary, task):
  return {row['slice']: row for row in summary['tasks'][task]['slices']}


def test_a_model_worse_on_one_large_slice_only_is_not_blessed_naming_the_slice(
    sliced_evaluation):
  summary = sliced_evaluation['summary']
  click = summary['tasks']['click']
  # Overall, the candidate passes every check, its comparison with the served model included.
  assert click['failed_checks'] == [], click
  assert click['vs_served']['auc']['passed'] is True
  slices = _slices(summary, 'click')
  web = slices[f'device={WORSE_DEVICE}']
  assert web['gated'] and web['passed'] is False and web['failed'] == ['auc']
  assert web['metrics']['auc'] < web['baseline_metrics']['auc'] - 0.05
  for device in ('ios', 'android'):  # predictions unchanged there
    assert slices[f'device={device}']['passed'] is True
    assert slices[f'device={device}']['metrics']['auc'] == pytest.approx(
        slices[f'device={device}']['baseline_metrics']['auc'], abs=1e-6)
  assert summary['blessed'] is False
  [reason] = [r for r in summary['not_blessed_because'] if f'device={WORSE_DEVICE} (' in r]
  assert reason.startswith(f'click on slice device={WORSE_DEVICE} ({web["example_count"]} '
                           'eval examples): auc changed by -'), reason
  assert reason.endswith('more than its max_regression allows')
  assert f'auc on device={WORSE_DEVICE}' in format_table(summary)
  page = render(summary, {})
  assert '<h2>Slices</h2>' in page and f'device={WORSE_DEVICE}' in page


def test_small_slices_are_reported_not_gated(sliced_evaluation):
  slices = _slices(sliced_evaluation['summary'], 'click')
  crosses = [row for name, row in slices.items() if ', user_segment=' in name]
  small = [row for row in crosses if row['example_count'] < MIN_EXAMPLES]
  assert small, sorted((row['slice'], row['example_count']) for row in crosses)
  for row in small:
    assert row['gated'] is False and row['passed'] is None
  for row in crosses:
    assert row['slice'].startswith('device=')
    assert row['gated'] == (row['example_count'] >= MIN_EXAMPLES)


def test_slice_metrics_equal_sklearn_on_the_slice_rows(sliced_evaluation, e2e_run):
  """The served model's click AUC and example count per device, as TFMA computed them (the
  baseline side), against scikit-learn on the eval rows of that device."""
  records, devices, clicks = _eval_rows(e2e_run)
  served = tf.saved_model.load(_served_model_dir(e2e_run))
  predictions = np.concatenate([
      served.signatures[SERVING_SIGNATURE](examples=tf.constant(records[i:i + 512]))[
          'click'].numpy().reshape(-1) for i in range(0, len(records), 512)])
  slices = _slices(sliced_evaluation['summary'], 'click')
  assert {name for name in slices if ',' not in name} == {
      f'device={d}' for d in np.unique(devices)}
  for device in np.unique(devices):
    rows = devices == device
    row = slices[f'device={device}']
    assert row['example_count'] == rows.sum()
    assert row['baseline_metrics']['mean_label'] == pytest.approx(clicks[rows].mean(), abs=1e-6)
    # TFMA's AUC integrates over 10,000 thresholds: equal up to that discretisation.
    assert row['baseline_metrics']['auc'] == pytest.approx(
        roc_auc_score(clicks[rows], predictions[rows]), abs=2e-3), device


def test_a_pipeline_run_reports_every_task_per_device(e2e_run):
  """The shared run (evaluation.slices: [device], nothing served): each task's slices add up
  to its eval set, reported, not gated."""
  summary = e2e_run['summary']
  for name, task in summary['tasks'].items():
    slices = {row['slice']: row for row in task['slices']}
    assert set(slices) == {'device=android', 'device=ios', 'device=web'}, name
    assert sum(row['example_count'] for row in slices.values()) == (
        task['metrics']['example_count']), name
    for row in slices.values():
      assert row['gated'] is False and row['passed'] is None and row['baseline_metrics'] == {}
  assert summary['blessed']


# ---------------------------------------------------------------------------------------------
# The gate's rule, on given metric values.


def _eval_config(tolerance):
  from pipeline.config import Threshold  # pylint: disable=g-import-not-at-top
  from conftest import sample_config  # pylint: disable=g-import-not-at-top
  config = sample_config(evaluation={'slices': ['device']})
  config = dataclasses.replace(config, tasks=tuple(
      dataclasses.replace(t, max_regression={'auc': tolerance}) if t.name == 'click'
      else dataclasses.replace(t, thresholds={'root_mean_squared_error': Threshold(max=30.0)})
      for t in config.tasks))
  return build_eval_config(config)


def _values(count, auc, baseline_auc, rmse=10.0, baseline_rmse=10.0, mean_label=0.2):
  return {CANDIDATE: {'click': {'example_count': count, 'auc': auc, 'mean_label': mean_label},
                      'dwell': {'example_count': count, 'root_mean_squared_error': rmse}},
          BASELINE: {'click': {'example_count': count, 'auc': baseline_auc,
                               'mean_label': mean_label},
                     'dwell': {'example_count': count,
                               'root_mean_squared_error': baseline_rmse}}}


def test_the_gate_holds_large_slices_to_the_task_tolerance():
  sliced = {
      OVERALL: _values(1000, 0.70, 0.70),
      'device=web': _values(200, 0.68, 0.70),           # -0.02: within 0.03
      'device=ios': _values(200, 0.66, 0.70),           # -0.04: fails
      'device=tv': _values(199, 0.50, 0.70),            # too small to gate
      'device=car': _values(300, 0.0, 0.7, mean_label=1.0),  # one class: undefined, not gated
      'device=pc': _values(300, 0.70, 0.70, rmse=10.3, baseline_rmse=10.0),  # +3% > 2%
  }
  judged = judge_slices(sliced, _eval_config(0.03), min_examples=200)
  assert judged['slices']['device=web']['click']['checks']['auc']['passed'] is True
  assert judged['slices']['device=ios']['click']['checks']['auc']['passed'] is False
  assert judged['slices']['device=tv']['click'] == {
      'example_count': 199, 'gated': False,
      'checks': {'auc': {'value': 0.5, 'baseline_value': 0.7}}}
  assert 'AUC needs both classes' in (
      judged['slices']['device=car']['click']['checks']['auc']['undefined'])
  assert judged['slices']['device=pc']['dwell']['checks'][
      'root_mean_squared_error']['passed'] is False
  assert OVERALL not in judged['slices']
  assert judged['failures'] == [
      'click on slice device=ios (200 eval examples): auc changed by -0.0400 against the served '
      'model (0.7000), more than its max_regression allows',
      'dwell on slice device=pc (300 eval examples): root_mean_squared_error changed by '
      '+0.3000 against the served model (10.0000), more than its max_regression allows']
  # Off, or nothing served: every slice is reported, none gated.
  for off in (judge_slices(sliced, _eval_config(0.03), min_examples=0),
              judge_slices({k: {CANDIDATE: v[CANDIDATE], BASELINE: {}}
                            for k, v in sliced.items()}, _eval_config(0.03), 200)):
    assert off['failures'] == []
    assert not any(o['gated'] for outputs in off['slices'].values() for o in outputs.values())
