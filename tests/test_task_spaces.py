"""Tasks defined on part of the rows (tasks[].space, tasks[].weight): what ingestion writes,
tf.Transform passes on, the loss computes, and TFMA evaluates, on real TFX, TF, Beam and TFMA.

The sample config defines conversion and dwell where click == 1, and the sample logs leave both
out of the lines without a click; the shared end-to-end run is on those."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from sklearn.metrics import roc_auc_score
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from components.records import RecordError, parse_line, record_to_example
from conftest import eval_rows, tiny_config, tiny_model
from pipeline.config import parse_config
from pipeline.local_runner import PipelineRunError, run_local
from pipeline.report import render
from pipeline.sample_logs import generate_logs
from trainer.export import SERVING_SIGNATURE
from trainer.preprocessing import build_preprocessing_fn, transformed_layout

CLICKED = {'user_id': 'u1', 'user_segment': 's2', 'item_id': 'i9', 'item_category': 'c01',
           'item_price': 12.5, 'device': 'ios', 'hour': 7, 'position': 3, 'click': 1,
           'conversion': 1, 'dwell_seconds': 31.5}
NOT_CLICKED = {k: v for k, v in dict(CLICKED, click=0).items()
               if k not in ('conversion', 'dwell_seconds')}


def _values(example, name):
  feature = example.features.feature[name]
  return list(feature.int64_list.value or feature.float_list.value or feature.bytes_list.value)


def _reason(record, config):
  with pytest.raises(RecordError) as e:
    record_to_example(record, config)
  return e.value


# ---------------------------------------------------------------------------------------------
# Ingestion


def test_labels_absent_outside_the_space_are_0_with_weight_0(sample_config_obj):
  outside = parse_line(json.dumps(NOT_CLICKED), sample_config_obj)
  inside = parse_line(json.dumps(CLICKED), sample_config_obj)
  assert _values(outside, 'conversion') == [0] and _values(outside, 'dwell_seconds') == [0.0]
  assert _values(outside, 'conversion__weight') == [0.0]
  assert _values(outside, 'dwell__weight') == [0.0]
  assert _values(inside, 'conversion') == [1] and _values(inside, 'dwell_seconds') == [31.5]
  assert _values(inside, 'conversion__weight') == [1.0]
  assert 'click__weight' not in inside.features.feature  # a task on every row has none


def test_inside_the_space_the_label_is_required(sample_config_obj):
  record = {k: v for k, v in CLICKED.items() if k != 'conversion'}
  error = _reason(record, sample_config_obj)
  assert error.reason == 'missing_field:conversion'
  assert 'task conversion is defined on this record' in error.detail


def test_a_label_present_outside_the_space_is_still_checked(sample_config_obj):
  assert _reason(dict(NOT_CLICKED, conversion='yes'),
                 sample_config_obj).reason == 'bad_type:conversion'
  assert _reason(dict(NOT_CLICKED, dwell_seconds=-2.0),
                 sample_config_obj).reason == 'out_of_range:dwell_seconds'
  # Present and valid outside: kept as written, still weight 0.
  example = record_to_example(dict(NOT_CLICKED, conversion=0, dwell_seconds=0.0),
                              sample_config_obj)
  assert _values(example, 'conversion__weight') == [0.0]


SURVEY_CONFIG = parse_config({
    'name': 'spaces', 'data': {'input_base': '/unused', 'split_key': 'user'},
    'features': [{'name': 'device', 'type': 'categorical'},
                 {'name': 'hour', 'type': 'categorical'},
                 {'name': 'position', 'type': 'numeric'}],
    'tasks': [{'name': 'click', 'label': 'click', 'type': 'binary'},
              # answered on a few rows; each answer weighted by the survey's sampling weight
              {'name': 'survey', 'label': 'liked', 'type': 'binary',
               'space': {'label_present': True}, 'weight': 'survey_weight'},
              # defined on iOS at 7 o'clock only (a categorical written as an integer)
              {'name': 'ios_morning', 'label': 'seconds', 'type': 'regression',
               'space': {'where': {'device': 'ios', 'hour': 7}}}]})
SURVEY_ROW = {'user': 'u', 'device': 'ios', 'hour': 7, 'position': 1.0, 'click': 0,
              'liked': 1, 'survey_weight': 2.5, 'seconds': 4.0}


def test_label_present_and_row_weights():
  config = SURVEY_CONFIG
  example = record_to_example(SURVEY_ROW, config)
  assert _values(example, 'survey__weight') == [2.5]
  assert _values(example, 'ios_morning__weight') == [1.0]
  unanswered = record_to_example({k: v for k, v in SURVEY_ROW.items()
                                  if k not in ('liked', 'survey_weight')}, config)
  assert _values(unanswered, 'liked') == [0] and _values(unanswered, 'survey__weight') == [0.0]
  assert record_to_example(dict(SURVEY_ROW, liked=None), config).features.feature[
      'survey__weight'].float_list.value == [0.0]
  for weight, reason in ((None, 'missing_field:survey_weight'),
                         (-1.0, 'out_of_range:survey_weight'),
                         ('x', 'bad_type:survey_weight'),
                         (float('inf'), 'non_finite:survey_weight')):
    assert _reason(dict(SURVEY_ROW, survey_weight=weight), config).reason == reason
  assert 'survey_weight' not in record_to_example(
      dict(SURVEY_ROW, survey_weight=1.0), config).features.feature  # read, not a feature


def test_a_condition_on_categorical_features():
  config = SURVEY_CONFIG
  for changes in ({'device': 'android'}, {'hour': 8}):
    outside = record_to_example(
        {k: v for k, v in dict(SURVEY_ROW, **changes).items() if k != 'seconds'}, config)
    assert _values(outside, 'ios_morning__weight') == [0.0]
  # "7" and 7 are the same category, as ingestion encodes both as b'7'.
  assert _values(record_to_example(dict(SURVEY_ROW, hour='7'), config),
                 'ios_morning__weight') == [1.0]
  assert _reason({k: v for k, v in SURVEY_ROW.items() if k != 'seconds'},
                 config).reason == 'missing_field:seconds'


def test_a_space_empty_in_a_split_stops_the_run_naming_the_task(tmp_path):
  generate_logs(str(tmp_path / 'logs'), rows=300, days=1, seed=5)
  config = dataclasses.replace(
      _sample(tmp_path), tasks=tuple(
          dataclasses.replace(t, space=dataclasses.replace(t.space, where={'device': 'tablet'}))
          if t.name == 'conversion' else t for t in _sample(tmp_path).tasks))
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert "Task 'conversion' has no example in the train split" in message, message
  assert "where device == 'tablet'" in message
  assert e.value.summary['components']['LogExampleGen']['state'] == 'FAILED'
  assert 'Transform' not in e.value.summary['components']


def _sample(tmp_path):
  from conftest import sample_config  # pylint: disable=g-import-not-at-top
  return sample_config(data={'input_base': str(tmp_path / 'logs')},
                       serving={'push_dir': str(tmp_path / 'serving')})


# ---------------------------------------------------------------------------------------------
# tf.Transform


def test_preprocessing_passes_the_example_weights_with_the_labels(tmp_path):
  config = parse_config({
      'name': 'prep', 'data': {'input_base': '/unused', 'split_key': 'device'},
      'features': [{'name': 'device', 'type': 'categorical'},
                   {'name': 'position', 'type': 'numeric'}],
      'tasks': [{'name': 'click', 'label': 'click', 'type': 'binary'},
                {'name': 'conversion', 'label': 'conversion', 'type': 'binary',
                 'space': {'where': {'click': 1}}}]})
  rows = [{'device': d, 'position': float(i), 'click': c, 'conversion': v,
           'conversion__weight': float(c)}
          for i, (d, c, v) in enumerate([('ios', 1, 1), ('web', 0, 0), ('ios', 1, 0),
                                         ('web', 0, 0)])]
  spec = {'device': tf.io.FixedLenFeature([], tf.string),
          'position': tf.io.FixedLenFeature([], tf.float32),
          'click': tf.io.FixedLenFeature([], tf.int64),
          'conversion': tf.io.FixedLenFeature([], tf.int64),
          'conversion__weight': tf.io.FixedLenFeature([], tf.float32)}
  metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
  with tft_beam.Context(temp_dir=str(tmp_path)):
    (data, _), _ = ((rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
        build_preprocessing_fn(config)))
  layout = transformed_layout(config)
  assert layout['conversion__weight'] == ('labels', 2)  # after the labels
  column, index = layout['conversion__weight']
  assert [row[column][index] for row in data] == [1.0, 0.0, 1.0, 0.0]
  # The analyzers see every row: the position's z-score uses all four values.
  column, index = layout['position']
  assert sum(row[column][index] for row in data) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The loss

SPACE_TASKS = [{'name': 'click', 'label': 'click', 'type': 'binary', 'head_units': [4]},
               {'name': 'buy', 'label': 'buy', 'type': 'binary', 'head_units': [4],
                'space': {'where': {'click': 1}}, 'weight': 'w'},
               {'name': 'dwell', 'label': 'dwell', 'type': 'regression', 'head_units': [4],
                'space': {'where': {'click': 1}}}]
CARDINALITIES = {'user': 12, 'device': 4}


def _batch(n=32, seed=0, buy_weights=None):
  rng = np.random.default_rng(seed)
  click = rng.integers(0, 2, n).astype(np.float32)
  features = {'user': tf.constant(rng.integers(0, 12, n)),
              'device': tf.constant(rng.integers(0, 4, n)),
              'position': tf.constant(rng.normal(size=n).astype(np.float32))}
  weights = click * rng.choice([0.5, 1.0, 3.0], n) if buy_weights is None else buy_weights
  labels = {'click': click, 'buy': click * rng.integers(0, 2, n),
            'dwell': click * rng.gamma(2.0, 3.0, n), 'buy__weight': weights,
            'dwell__weight': click}
  return features, {k: tf.constant(np.asarray(v, np.float32)) for k, v in labels.items()}


def test_a_tasks_loss_is_the_weighted_mean_over_its_space():
  config = tiny_config('space-loss', SPACE_TASKS)
  model = tiny_model(config, CARDINALITIES)
  features, labels = _batch()
  _, task_losses, _ = model._task_losses(features, labels, training=False)  # pylint: disable=protected-access
  outputs = {k: v.numpy().reshape(-1) for k, v in model(features).items()}
  y, p = labels['buy'].numpy(), np.clip(outputs['buy'], 1e-7, 1 - 1e-7)
  w = labels['buy__weight'].numpy()
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  assert float(task_losses['buy']) == pytest.approx(np.sum(w * bce) / np.sum(w), rel=1e-5)
  inside = labels['dwell__weight'].numpy() > 0
  squared = (labels['dwell'].numpy() - outputs['dwell']) ** 2
  assert float(task_losses['dwell']) == pytest.approx(squared[inside].mean(), rel=1e-5)
  y, p = labels['click'].numpy(), np.clip(outputs['click'], 1e-7, 1 - 1e-7)
  assert float(task_losses['click']) == pytest.approx(
      np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-5)


@pytest.mark.parametrize('training', [
    {'loss_weighting': 'uncertainty'}, {'loss_weighting': 'equal'},
    {'loss_weighting': 'fixed'}, {'loss_weighting': 'dwa'}, {'loss_weighting': 'gradnorm'},
    {'loss_weighting': 'uncertainty', 'gradient_surgery': 'pcgrad'},
], ids=['uncertainty', 'equal', 'fixed', 'dwa', 'gradnorm', 'pcgrad'])
def test_a_batch_without_rows_of_a_task_leaves_it_untouched(training):
  """No row of `buy`'s space in the batch: finite losses, and the step changes neither its
  head nor its loss weighting state (the other tasks train)."""
  config = tiny_config('space-empty', SPACE_TASKS, training=training)
  model = tiny_model(config, CARDINALITIES)
  features, labels = _batch(buy_weights=np.zeros(32, np.float32))
  model.train_on_batch(features, labels)  # build every optimizer's slots
  grouped = model.grouped_variables()
  before = {group: [v.numpy().copy() for v in variables] for group, variables in grouped.items()}
  variance = model.loss_weighting.log_variances.get('buy')
  variance_before = None if variance is None else float(variance.numpy())
  logs = model.train_on_batch(features, labels, return_dict=True)
  assert all(np.isfinite(float(v)) for v in logs.values()), logs
  assert logs['buy_loss'] == 0.0
  for variable, value in zip(grouped['buy'], before['buy']):
    np.testing.assert_array_equal(variable.numpy(), value)
  assert any(not np.array_equal(v.numpy(), b) for v, b in zip(grouped['click'], before['click']))
  if variance is not None:
    assert float(variance.numpy()) == variance_before
  if training['loss_weighting'] == 'gradnorm':  # L_buy(0) waits for a batch with its rows
    assert list(model.loss_weighting.initial_losses_set.numpy()) == [True, False, True]
    model.train_on_batch(*_batch(seed=3))
    assert list(model.loss_weighting.initial_losses_set.numpy()) == [True, True, True]
    assert float(model.loss_weighting.initial_losses.numpy()[1]) > 0


def test_the_logged_task_loss_is_the_mean_over_the_rows_of_the_epoch():
  """Keras' `<task>_loss` over two batches: the weighted mean over both batches' rows of the
  space, not the mean of the two batch means."""
  config = tiny_config('space-logs', SPACE_TASKS)
  model = tiny_model(config, CARDINALITIES)
  few = _batch(seed=1, buy_weights=np.r_[np.ones(2), np.zeros(30)].astype(np.float32))
  many = _batch(seed=2, buy_weights=np.ones(32, np.float32))
  sums, weights = [], []
  for features, labels in (few, many):
    _, task_losses, _ = model._task_losses(features, labels, training=False)  # pylint: disable=protected-access
    sums.append(float(task_losses['buy']) * float(tf.reduce_sum(labels['buy__weight'])))
    weights.append(float(tf.reduce_sum(labels['buy__weight'])))
  dataset = tf.data.Dataset.from_tensors(few[0]).concatenate(
      tf.data.Dataset.from_tensors(many[0]))
  labels = tf.data.Dataset.from_tensors(few[1]).concatenate(tf.data.Dataset.from_tensors(many[1]))
  logs = model.evaluate(tf.data.Dataset.zip((dataset, labels)), verbose=0, return_dict=True)
  assert logs['buy_loss'] == pytest.approx(sum(sums) / sum(weights), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The shared end-to-end run: TFMA on each task's space, the summary and the report


def _served(e2e_run, records):
  """The pushed model's outputs on serialized examples (serving_default)."""
  version = e2e_run['summary']['push']['version']
  loaded = tf.saved_model.load(str(e2e_run['root'] / 'serving' /
                                   e2e_run['config'].serving.model_name / str(version)))
  outputs = [loaded.signatures[SERVING_SIGNATURE](examples=tf.constant(records[i:i + 512]))
             for i in range(0, len(records), 512)]
  return {name: np.concatenate([o[name].numpy().reshape(-1) for o in outputs])
          for name in outputs[0]}


def test_tfma_evaluates_each_task_on_exactly_the_rows_of_its_space(e2e_run):
  summary = e2e_run['summary']
  records, values = eval_rows(e2e_run, ('click', 'conversion', 'dwell_seconds',
                                        'conversion__weight', 'dwell__weight'))
  predicted = _served(e2e_run, records)
  clicked = values['click'] == 1
  np.testing.assert_array_equal(values['conversion__weight'], clicked.astype(np.float32))
  np.testing.assert_array_equal(values['dwell__weight'], clicked.astype(np.float32))
  assert 0 < clicked.sum() < len(records)
  conversion = summary['tasks']['conversion']['metrics']
  assert conversion['example_count'] == clicked.sum()
  assert conversion['mean_label'] == pytest.approx(values['conversion'][clicked].mean(),
                                                   abs=1e-6)
  assert conversion['mean_prediction'] == pytest.approx(
      predicted['conversion'][clicked].mean(), rel=1e-4)
  # TFMA's AUC integrates over 10,000 thresholds: equal up to that discretisation.
  assert conversion['auc'] == pytest.approx(
      roc_auc_score(values['conversion'][clicked], predicted['conversion'][clicked]), abs=2e-3)
  # On every row the AUC would differ: the space is what TFMA evaluated.
  assert abs(roc_auc_score(values['conversion'], predicted['conversion']) -
             conversion['auc']) > 0.01
  dwell = summary['tasks']['dwell']['metrics']
  assert dwell['example_count'] == clicked.sum()
  assert dwell['root_mean_squared_error'] == pytest.approx(np.sqrt(np.mean(
      (values['dwell_seconds'][clicked] - predicted['dwell'][clicked]) ** 2)), rel=1e-4)
  click = summary['tasks']['click']['metrics']
  assert click['example_count'] == len(records)
  assert click['auc'] == pytest.approx(roc_auc_score(values['click'], predicted['click']),
                                       abs=2e-3)


def test_the_summary_and_report_show_each_tasks_space_and_rows(e2e_run):
  summary = e2e_run['summary']
  by_split = summary['ingestion']['examples_by_split']
  tasks = summary['tasks']
  assert tasks['click']['space'] is None and tasks['click']['rows'] == by_split
  assert tasks['conversion']['space'] == 'click == 1'
  _, values = eval_rows(e2e_run, ('click',))
  assert tasks['conversion']['rows']['eval'] == int((values['click'] == 1).sum())
  assert 0 < tasks['conversion']['rows']['train'] < by_split['train']
  assert tasks['dwell']['rows'] == tasks['conversion']['rows']
  assert summary['ingestion']['task_rows_by_split']['conversion'] == tasks['conversion']['rows']
  page = render(summary, {})
  assert '<h2>Tasks and their rows</h2>' in page
  assert 'click == 1' in page
  # The lines without a click lack conversion and dwell, and none was quarantined for it.
  assert not any(reason.startswith('missing_field:conversion') or
                 reason.startswith('missing_field:dwell')
                 for reason in summary['ingestion']['reasons'])
