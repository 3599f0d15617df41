"""Serving contract of the pushed model (shared end-to-end run), and blessing against it."""

import dataclasses
import glob
import gzip
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from components import serving_push
from components import serving_requests
from components.records import record_to_example, record_to_instance
from conftest import copy_e2e_run, mlmd_store, output_uri
from pipeline import cli
from pipeline.serve_check import serve_check
from trainer.export import INSTANCES_SIGNATURE, SERVING_SIGNATURE


def _version_dir(e2e_run):
  push = e2e_run['summary']['push']
  assert push['pushed'], e2e_run['summary'].get('not_blessed_because')
  return push['path']


def _records(e2e_run, count=40):
  path = sorted(str(p) for p in e2e_run['logs'].glob('day=2026-11-01/*.gz'))[0]
  with gzip.open(path, 'rt') as f:
    return [json.loads(next(f)) for _ in range(count)]


def test_first_run_is_judged_on_thresholds_alone_and_pushed(e2e_run):
  summary, config = e2e_run['summary'], e2e_run['config']
  assert summary['baseline'] is None
  for task in config.tasks:
    checks = summary['tasks'][task.name]['vs_served']
    assert checks and all(c['passed'] is None for c in checks.values()), checks
  assert summary['blessed']
  base = os.path.join(config.serving.push_dir, config.serving.model_name)
  assert serving_push.list_versions(base) == [summary['push']['version']]
  assert summary['push']['labels'] == {'stable': summary['push']['version']}
  assert summary['push']['warmup_requests']
  assert serving_push.read_labels(config.serving.push_dir, config.serving.model_name) == {
      'stable': summary['push']['version']}


def test_warmup_requests_parse_and_every_one_succeeds(e2e_run):
  version_dir = _version_dir(e2e_run)
  logs = serving_requests.read_warmup(
      os.path.join(version_dir, serving_requests.WARMUP_FILE))
  signatures = [log.predict_log.request.model_spec.signature_name for log in logs]
  assert signatures.count(SERVING_SIGNATURE) == 2 and INSTANCES_SIGNATURE in signatures
  loaded = tf.saved_model.load(version_dir, tags=['serve'])
  tasks = [t.name for t in e2e_run['config'].tasks]
  for log in logs:
    request = log.predict_log.request
    assert request.model_spec.name == e2e_run['config'].serving.model_name
    outputs = serving_requests.run_request(loaded, request)
    assert set(tasks) <= set(outputs)
    batch = len(next(iter(serving_requests.request_inputs(request).values())))
    for name in tasks:
      assert outputs[name].shape == (batch, 1) and np.all(np.isfinite(outputs[name]))


def test_serve_check_matches_the_evaluator_predictions(e2e_run, capsys):
  report = serve_check(_version_dir(e2e_run))
  assert report['ok'], report
  names = [c['name'] for c in report['checks']]
  assert any(n.startswith('gRPC Predict') for n in names)
  assert any(n.startswith('REST predict_instances') for n in names)
  assert any(n.startswith('a NaN numeric feature is refused') for n in names)
  assert cli.main(['serve-check', _version_dir(e2e_run)]) == 0
  assert 'serve-check passed' in capsys.readouterr().out


def test_serve_check_fails_on_a_model_that_disagrees(e2e_run, tmp_path, capsys):
  """The comparison can fail: a sample file whose predictions are off by 1e-3 is caught."""
  copy = tmp_path / 'm' / '1'
  shutil.copytree(_version_dir(e2e_run), copy)
  sample_path = copy / serving_requests.SAMPLE_PREDICTIONS_FILE
  sample = json.loads(sample_path.read_text())
  sample['predictions']['click'][0][0] += 1e-3
  sample_path.write_text(json.dumps(sample))
  report = serve_check(str(copy))
  failed = [c['name'] for c in report['checks'] if not c['ok']]
  assert not report['ok'] and len(failed) == 2, report  # gRPC and REST both disagree
  assert cli.main(['serve-check', str(copy)]) == 1
  assert cli.main(['serve-check', str(tmp_path)]) == 2  # not a version directory
  assert 'no saved_model.pb' in capsys.readouterr().err


def test_missing_features_and_unseen_categories_give_valid_outputs(e2e_run):
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  records = _records(e2e_run, 4)
  full = record_to_example(records[0], config, with_labels=False)
  missing = tf.train.Example()
  missing.CopyFrom(full)
  for name in ('item_category', 'item_price', 'device'):
    del missing.features.feature[name]
  unseen = tf.train.Example()
  unseen.CopyFrom(full)
  for feature in config.categorical_features:
    unseen.features.feature[feature.name].bytes_list.value[:] = [b'never-seen-in-training']
  empty = tf.train.Example()
  batch = [e.SerializeToString() for e in (full, missing, unseen, empty)]
  outputs = serving_requests.run_request(loaded, serving_requests.predict_request(
      config.serving.model_name, SERVING_SIGNATURE,
      serving_requests.example_inputs(loaded.signatures[SERVING_SIGNATURE], batch)))
  for task in config.tasks:
    values = outputs[task.name]
    assert values.shape == (4, 1) and np.all(np.isfinite(values)), (task.name, values)
    if task.type == 'binary':
      assert np.all((values > 0) & (values < 1)), (task.name, values)
  # The unseen categories went to OOV buckets: a different prediction from the full record.
  assert not np.allclose(outputs['click'][0], outputs['click'][2])

  instances_signature = loaded.signatures[INSTANCES_SIGNATURE]
  instances = serving_requests.instances_from_examples(instances_signature, [batch[2]])
  rest = instances_signature(**{k: tf.constant(v) for k, v in
                                serving_requests.instances_to_inputs(
                                    instances_signature, instances).items()})
  np.testing.assert_allclose(rest['click'].numpy(), outputs['click'][2:3], atol=1e-6)


def test_rest_instances_signature_matches_serving_default(e2e_run):
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in _records(e2e_run)]
  by_examples = loaded.signatures[SERVING_SIGNATURE](examples=tf.constant(examples))
  signature = loaded.signatures[INSTANCES_SIGNATURE]
  body = json.loads(json.dumps({'instances': serving_requests.instances_from_examples(
      signature, examples)}))
  assert set(body['instances'][0]) == {f.name for f in config.features}
  by_instances = signature(**{k: tf.constant(v) for k, v in serving_requests.instances_to_inputs(
      signature, body['instances']).items()})
  for task in config.tasks:
    np.testing.assert_allclose(by_instances[task.name].numpy(),
                               by_examples[task.name].numpy(), atol=1e-6)


def _both_signatures(loaded, config, records):
  """{'examples' | 'instances': {task: outputs}} for records, through serving_default
  (record_to_example) and predict_instances (record_to_instance, through JSON and the TF
  Serving REST conversion)."""
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in records]
  by_examples = serving_requests.run_request(loaded, serving_requests.predict_request(
      config.serving.model_name, SERVING_SIGNATURE,
      serving_requests.example_inputs(loaded.signatures[SERVING_SIGNATURE], examples)))
  signature = loaded.signatures[INSTANCES_SIGNATURE]
  body = json.loads(json.dumps({'instances': [record_to_instance(r, config) for r in records]}))
  by_instances = signature(**{k: tf.constant(v) for k, v in serving_requests.instances_to_inputs(
      signature, body['instances']).items()})
  return {'examples': by_examples,
          'instances': {k: v.numpy() for k, v in by_instances.items()}}


def test_serving_refuses_a_non_finite_numeric_naming_the_feature(e2e_run):
  """Ingestion quarantines NaN and infinite numbers; both signatures refuse them (a NaN price
  used to give a click probability of 0.41)."""
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  [record] = _records(e2e_run, 1)
  example = record_to_example(record, config, with_labels=False)
  for bad in (float('nan'), float('inf'), float('-inf')):
    example.features.feature['item_price'].float_list.value[:] = [bad]
    batch = [record_to_example(record, config, with_labels=False).SerializeToString(),
             example.SerializeToString()]
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      loaded.signatures[SERVING_SIGNATURE](examples=tf.constant(batch))
    assert ('item_price is not a finite number (NaN or infinite): ingestion quarantines it as '
            'non_finite:item_price; request rows:] [1]') in e.value.message, e.value.message
    signature = loaded.signatures[INSTANCES_SIGNATURE]
    body = json.loads(json.dumps({'instances': [dict(record_to_instance(record, config),
                                                     item_price=bad)]}))
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      signature(**{k: tf.constant(v) for k, v in serving_requests.instances_to_inputs(
          signature, body['instances']).items()})
    assert 'item_price is not a finite number' in e.value.message


def test_a_value_far_outside_the_training_range_gets_the_prediction_at_its_edge(e2e_run):
  """A price of 1e30 used to give a dwell of -2.3e29 seconds; now it is clamped to the largest
  price in the train split (what tf.Transform analysed), in both signatures."""
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  train = os.path.join(output_uri(e2e_run, 'LogExampleGen', 'examples'), 'Split-train', '*')
  highest = max(tf.train.Example.FromString(r.numpy()).features.feature['item_price']
                .float_list.value[0]
                for r in tf.data.TFRecordDataset(tf.io.gfile.glob(train),
                                                 compression_type='GZIP'))
  [record] = _records(e2e_run, 1)
  records = [dict(record, item_price=p) for p in (1e30, 1e12, float(highest))]
  outputs = _both_signatures(loaded, config, records)
  for signature_outputs in outputs.values():
    for task in config.tasks:
      values = signature_outputs[task.name].reshape(-1)
      assert np.all(np.isfinite(values)), (task.name, values)
      np.testing.assert_allclose(values[:2], [values[2]] * 2, rtol=1e-6, atol=1e-6)
    assert 0 <= signature_outputs['dwell'].reshape(-1)[0] < 1e4


def test_rest_requests_name_the_feature_and_take_log_values(e2e_run):
  """TF Serving's REST API types JSON values by the signature: `"hour": 21` for a string
  input is refused, naming the instance and the key, as is a string for a numeric one.
  record_to_instance sends a log record as ingestion reads it, and gets serving_default's
  answer."""
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  signature = loaded.signatures[INSTANCES_SIGNATURE]
  records = _records(e2e_run, 3)
  good = [record_to_instance(r, config) for r in records]
  for key, value, said in (('hour', 21, 'JSON Value: 21 Type: Number is not of expected type: '
                                        'string'),
                           ('position', 'top', 'JSON Value: "top" Type: String is not of '
                                               'expected type: float')):
    with pytest.raises(serving_requests.RestRequestError) as e:
      serving_requests.instances_to_inputs(signature, [good[0], dict(good[1], **{key: value})])
    assert str(e.value) == (f"Failed to process element: 1 key: {key} of 'instances' list. "
                            f'Error: {said}')
  with pytest.raises(serving_requests.RestRequestError) as e:
    serving_requests.instances_to_inputs(signature, [{k: v for k, v in good[0].items()
                                                      if k != 'device'}])
  assert 'keys must be equal to: device,hour,' in str(e.value)
  as_logged = [dict(r, hour=int(r['hour'])) for r in records]  # integers, as the log holds them
  outputs = _both_signatures(loaded, config, as_logged)
  for task in config.tasks:
    np.testing.assert_allclose(outputs['instances'][task.name], outputs['examples'][task.name],
                               atol=1e-6)


def test_a_missing_feature_gets_the_documented_default_in_both_signatures(e2e_run):
  """record_to_example(with_labels=False) leaves a missing feature out and the model fills
  its default; record_to_instance fills the same default: '' for a categorical, 0 for a
  numeric."""
  config = e2e_run['config']
  loaded = tf.saved_model.load(_version_dir(e2e_run), tags=['serve'])
  [record] = _records(e2e_run, 1)
  missing = {k: v for k, v in record.items() if k not in ('item_price', 'device')}
  explicit = dict(record, item_price=0.0, device='')
  outputs = _both_signatures(loaded, config, [missing, explicit])
  for signature_outputs in outputs.values():
    for task in config.tasks:
      values = signature_outputs[task.name].reshape(-1)
      assert values[0] == pytest.approx(values[1], abs=1e-6), task.name
      assert values[0] == pytest.approx(outputs['examples'][task.name].reshape(-1)[0],
                                        abs=1e-6)


@pytest.fixture(scope='module')
def worse_run(e2e_run, tmp_path_factory):
  """After the good model is served, a model trained for 2 steps, with no absolute thresholds:
  only the comparison with the served model can refuse it. Runs in a copy of the shared run
  directory (so ingestion and Transform come from the cache) against a copy of its serving
  directory."""
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  root = copy_e2e_run(e2e_run, tmp_path_factory.mktemp('worse') / 'copy')
  config = e2e_run['config']
  config = dataclasses.replace(
      config.with_overrides(serving={'push_dir': str(root / 'serving')},
                            training={'train_steps': 2}),
      tasks=tuple(dataclasses.replace(t, thresholds={}) for t in config.tasks))
  before = sorted(os.listdir(root / 'serving' / config.serving.model_name))
  models_config = (root / 'serving' / 'models.config').read_text()
  summary = run_local(config, str(root / 'run'))
  return {'summary': summary, 'config': config, 'root': root, 'before': before,
          'models_config': models_config}


def test_worse_model_is_not_blessed_and_not_pushed(worse_run, e2e_run):
  summary, config, root = worse_run['summary'], worse_run['config'], worse_run['root']
  served = e2e_run['summary']['push']['version']
  assert summary['components']['Transform']['state'] == 'CACHED'
  assert summary['baseline']['version'] == served
  assert not summary['blessed']
  assert not summary['push']['pushed']
  assert any('served model' in reason for reason in summary['not_blessed_because']), summary
  click = summary['tasks']['click']
  assert click['vs_served']['auc']['passed'] is False
  assert 'vs_served:auc' in click['failed_checks']
  # The baseline was evaluated on the same eval split as when it was trained and pushed.
  assert click['vs_served']['auc']['baseline_value'] == pytest.approx(
      e2e_run['summary']['tasks']['click']['metrics']['auc'], abs=1e-6)
  # The ranking score is judged against the served model's score as a task is.
  score = summary['score']
  assert score['vs_served']['auc']['passed'] is False
  assert score['vs_served']['auc']['baseline_value'] == pytest.approx(
      e2e_run['summary']['score']['metrics']['auc'], abs=1e-6)
  assert any(reason.startswith('score: auc changed by')
             for reason in summary['not_blessed_because']), summary['not_blessed_because']
  # The serving directory did not change.
  assert sorted(os.listdir(root / 'serving' / config.serving.model_name)) == worse_run['before']
  assert (root / 'serving' / 'models.config').read_text() == worse_run['models_config']


def test_an_artifact_that_lost_a_file_is_recreated_not_reused(worse_run):
  """Last test of the module: alters `worse_run`'s copy (its Evaluator output is its own, as
  its Trainer ran there). A file deleted from a cached artifact, here the TFMA metrics of the
  evaluation: TFX's cache only checks that the artifact's directory exists, so the rerun
  reused it and the summary lost every metric without a word (a deleted transformed-examples
  shard made the Trainer fail with no hint). The rerun names the artifact and the file, and
  runs its producer and consumers again; the rest stays cached."""
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top
  config, run_dir = worse_run['config'], worse_run['root'] / 'run'
  store = mlmd_store(run_dir)
  [evaluation] = read_run(store, config.name)['nodes']['Evaluator']['outputs']['evaluation']
  assert evaluation.uri.startswith(str(run_dir))  # the copy's own artifact
  [metrics] = glob.glob(os.path.join(evaluation.uri, 'metrics-*'))
  recorded = len(os.listdir(evaluation.uri))
  os.remove(metrics)

  summary = run_local(config, str(run_dir))
  assert summary['recreated_artifacts'] == [
      f"Re-creating Evaluator's output evaluation: 1 of its {recorded} file(s) missing since "
      f"it was written ({os.path.basename(metrics)}) in {evaluation.uri}; Evaluator and what "
      "reads it run again"]
  states = {name: c['state'] for name, c in summary['components'].items()}
  assert states['Evaluator'] == states['Pusher'] == 'COMPLETE', states
  for name in ('LogExampleGen', 'StatisticsGen', 'Transform', 'Trainer'):
    assert states[name] == 'CACHED', (name, states)
  assert summary['tasks']['click']['metrics']['auc'] == worse_run['summary']['tasks']['click'][
      'metrics']['auc']
  [old] = store.get_artifacts_by_id([evaluation.id])
  assert old.state == metadata_store_pb2.Artifact.DELETED

  rerun = run_local(config, str(run_dir))  # nothing lost now: all cached
  assert rerun['recreated_artifacts'] == []
  assert {c['state'] for c in rerun['components'].values()} == {'CACHED'}
