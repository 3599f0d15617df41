"""End to end: the whole pipeline on LocalDagRunner over a small generated log (shared run)."""

import glob
import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

from components.records import record_to_example
from conftest import BAD_LINES, mlmd_store, output_uri

EXPECTED_NODES = ['LogExampleGen', 'StatisticsGen', 'ImportSchemaGen', 'StrictExampleValidator',
                  'Transform', 'Trainer', 'Evaluator', 'Pusher']


def _split_examples(e2e_run, split):
  """Raw tf.Examples of one ExampleGen split, read from the artifact files."""
  uri = output_uri(e2e_run, 'LogExampleGen', 'examples')
  files = sorted(glob.glob(os.path.join(uri, f'Split-{split}', '*.gz')))
  assert files, uri
  return [tf.train.Example.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(files, compression_type='GZIP')]


def _value(example, name):
  feature = example.features.feature[name]
  kind = feature.WhichOneof('kind')
  return getattr(feature, kind).value[0]


def test_every_component_ran_according_to_ml_metadata(e2e_run):
  store = mlmd_store(e2e_run['run_dir'])
  pipeline_name = e2e_run['config'].name
  for node in EXPECTED_NODES:
    context = store.get_context_by_type_and_name('node', f'{pipeline_name}.{node}')
    assert context is not None, f'{node} has no node context'
    executions = store.get_executions_by_context(context.id)
    assert [e.last_known_state for e in executions] == [metadata_store_pb2.Execution.COMPLETE], node


def test_binary_tasks_beat_chance_and_model_is_blessed(e2e_run):
  summary = e2e_run['summary']
  for task in e2e_run['config'].tasks:
    metrics = summary['tasks'][task.name]['metrics']
    if task.type == 'binary':
      assert metrics['auc'] > 0.55, (task.name, metrics)
      assert metrics['example_count'] > 250  # conversion: the clicked eval rows
    else:
      assert 0 < metrics['root_mean_squared_error'] < 100, metrics
  assert summary['blessed'], summary['not_blessed_because']


def test_model_is_pushed_in_tf_serving_layout(e2e_run):
  push = e2e_run['summary']['push']
  assert push['pushed']
  base = os.path.join(e2e_run['config'].serving.push_dir, e2e_run['config'].serving.model_name)
  versions = os.listdir(base)
  assert versions == [str(push['version'])] and versions[0].isdigit()
  assert os.path.samefile(push['path'], os.path.join(base, versions[0]))
  assert os.path.exists(os.path.join(push['path'], 'saved_model.pb'))
  assets = os.listdir(os.path.join(push['path'], 'assets'))
  assert any('vocab_item_id' in a for a in assets), assets


def test_served_model_scores_raw_log_examples(e2e_run):
  config = e2e_run['config']
  model = tf.saved_model.load(e2e_run['summary']['push']['path'])
  serve = model.signatures['serving_default']
  log_file = sorted(glob.glob(str(e2e_run['logs'] / 'day=2026-11-01' / '*.gz')))[0]
  with gzip.open(log_file, 'rt') as f:
    records = [json.loads(next(f)) for _ in range(64)]
  serialized = [record_to_example(r, config, with_labels=False).SerializeToString()
                for r in records]
  outputs = serve(examples=tf.constant(serialized))
  # one output per task, and the ranking score the shared run configures (tests/test_score.py)
  assert set(outputs) == {t.name for t in config.tasks} | {config.serving.score.name}
  for task in config.tasks:
    values = outputs[task.name].numpy()
    assert values.shape == (64, 1), (task.name, values.shape)
    assert np.all(np.isfinite(values))
    if task.type == 'binary':
      assert np.all((values >= 0) & (values <= 1))
  # Unseen categories map to OOV buckets and omitted features get defaults: no failure.
  partial = record_to_example(dict(records[0], user_id='never-seen', item_id='never-seen'),
                              config, with_labels=False)
  del partial.features.feature['item_price']
  outputs = serve(examples=tf.constant([partial.SerializeToString()]))
  assert outputs['click'].shape == (1, 1)


def test_served_model_agrees_with_the_evaluator(e2e_run):
  """Mean served prediction on the eval split (on each task's space: the rows with a
  positive example weight) equals TFMA's mean_prediction."""
  model = tf.saved_model.load(e2e_run['summary']['push']['path'])
  serve = model.signatures['serving_default']
  examples = _split_examples(e2e_run, 'eval')
  outputs = serve(examples=tf.constant([e.SerializeToString() for e in examples]))
  for task in e2e_run['config'].tasks:
    tfma_mean = e2e_run['summary']['tasks'][task.name]['metrics']['mean_prediction']
    weights = (np.array([_value(e, task.weight_column) for e in examples])
               if task.weight_column else np.ones(len(examples)))
    served = np.average(outputs[task.name].numpy().reshape(-1), weights=weights)
    assert float(served) == pytest.approx(tfma_mean, rel=1e-4)


def test_split_by_user_keeps_each_user_in_one_split(e2e_run):
  train_users = {_value(e, 'user_id') for e in _split_examples(e2e_run, 'train')}
  eval_users = {_value(e, 'user_id') for e in _split_examples(e2e_run, 'eval')}
  assert train_users and eval_users
  assert not train_users & eval_users


def test_examples_are_written_in_random_order_and_spill_files_removed(e2e_run):
  # The log is in time order (hour rises through each day); ExampleGen's shuffle must not
  # leave it so, or training batches would come hour by hour.
  hours = [int(_value(e, 'hour')) for e in _split_examples(e2e_run, 'train')]
  falls = sum(b < a for a, b in zip(hours, hours[1:]))
  assert falls > 0.3 * len(hours), falls
  assert sorted(os.listdir(output_uri(e2e_run, 'LogExampleGen', 'examples'))) == [
      'Split-eval', 'Split-train']


def test_bad_lines_are_quarantined_and_counted(e2e_run):
  from components.log_example_gen import read_quarantined  # pylint: disable=g-import-not-at-top
  ingestion = e2e_run['summary']['ingestion']
  assert ingestion['num_ingested'] == 8000
  assert ingestion['num_quarantined'] == len(BAD_LINES)
  assert ingestion['reasons'] == {reason: 1 for _, reason in BAD_LINES}
  assert sum(ingestion['examples_by_split'].values()) == 8000
  # Two days of good lines and a third (the latest span) of bad ones: the 7-day window ending
  # at the latest span read all three.
  from tfx.components.example_gen.utils import date_to_span_number  # pylint: disable=g-import-not-at-top
  latest = date_to_span_number(2026, 11, 3)
  assert ingestion['spans'] == list(range(latest - 6, latest + 1))
  kept = read_quarantined(ingestion['quarantine_uri'])
  assert sorted(q['raw'].encode() for q in kept) == sorted(line for line, _ in BAD_LINES)
  assert {q['line_number'] for q in kept} == {1, 2, 3}
  assert all(q['file'].endswith('day=2026-11-03/impressions.jsonl.gz') for q in kept)


def test_run_summary_file_holds_the_contract(e2e_run):
  with open(e2e_run['run_dir'] / 'run_summary.json') as f:
    summary = json.load(f)
  assert set(summary['components']) == set(EXPECTED_NODES)
  assert all(c['wall_seconds'] >= 0 for c in summary['components'].values())
  for task in e2e_run['config'].tasks:
    task_summary = summary['tasks'][task.name]
    assert task_summary['sigma'] > 0 and task_summary['loss_weight'] > 0
    assert len(task_summary['sigma_by_epoch']) == 10
    assert all(t['passed'] for t in task_summary['thresholds'].values())
  # The dwell loss (seconds squared) is far larger than the click log loss, so uncertainty
  # weighting must have learned a larger sigma, hence a smaller weight, for it.
  assert summary['tasks']['dwell']['sigma'] > summary['tasks']['click']['sigma']
  assert summary['push']['pushed'] and summary['blessed']
