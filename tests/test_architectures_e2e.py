"""MMoE, ESMM and PLE through the whole local pipeline, in a copy of the shared run's directory:
both reuse its cached ingestion and Transform from ML Metadata (the model and the tasks'
thresholds and inputs are not part of what ingestion and Transform receive). MMoE trains with
DWA and PCGrad, ESMM with GradNorm: the Trainer's path for each balancing method."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
import tensorflow as tf

from components.records import record_to_example
from conftest import copy_e2e_run
from pipeline.config import Threshold

BALANCING = {
    'mmoe': {'loss_weighting': 'dwa', 'gradient_surgery': 'pcgrad'},
    'esmm': {'loss_weighting': 'gradnorm'},
}
MODELS = {
    'mmoe': {'type': 'mmoe', 'num_experts': 3, 'expert_units': [32]},
    'esmm': {'type': 'esmm', 'esmm_click_task': 'click', 'esmm_conversion_task': 'conversion'},
    # with dropout layers in the exported graph (inactive when serving) and a cross layer
    'ple': {'type': 'ple', 'expert_units': [32, 16], 'num_shared_experts': 2,
            'num_task_experts': 1, 'embedding_dropout': 0.1, 'head_dropout': 0.1,
            'cross_layers': 1},
}


@pytest.fixture(scope='module')
def runs(e2e_run, tmp_path_factory):
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  root = copy_e2e_run(e2e_run, tmp_path_factory.mktemp('architectures') / 'copy')
  results = {}
  for name, model in MODELS.items():
    training = {'train_steps': 100, 'eval_steps': 20, **BALANCING.get(name, {})}
    if name == 'ple':  # and early stopping, exporting the best epoch
      training['early_stopping'] = {'monitor': 'loss', 'patience': 2}
    config = e2e_run['config'].with_overrides(
        serving={'push_dir': str(root / f'serving-{name}')}, training=training, model=model)
    tasks = []
    for task in config.tasks:
      if task.type == 'binary':
        task = dataclasses.replace(task, thresholds={'auc': Threshold(min=0.55)})
      if name == 'mmoe' and task.name == 'dwell':
        task = dataclasses.replace(task, inputs_from=('click',))
      tasks.append(task)
    config = dataclasses.replace(config, tasks=tuple(tasks))
    if name == 'ple':  # and a quantile-bucket embedding and piecewise-linear bins of the
      # price (Transform runs again) and a periodic embedding of it (model-only)
      config = dataclasses.replace(config, features=tuple(
          dataclasses.replace(f, buckets=8, embedding_dim=4, periodic=8, piecewise_linear=6)
          if f.name == 'item_price' else f for f in config.features))
    results[name] = (config, run_local(config, str(root / 'run')))
  log_file = sorted(str(p) for p in e2e_run['logs'].glob('day=2026-11-01/*.gz'))[0]
  with gzip.open(log_file, 'rt') as f:
    records = [json.loads(next(f)) for _ in range(50)]
  return results, records


@pytest.mark.parametrize('name', sorted(MODELS))
def test_architecture_is_blessed_and_pushed(runs, name):
  config, summary = runs[0][name]
  assert summary['blessed'], summary['not_blessed_because']
  assert summary['push']['pushed']
  for task in config.tasks:
    task_summary = summary['tasks'][task.name]
    if task.type == 'binary':
      assert task_summary['metrics']['auc'] > 0.55, (name, task.name, task_summary['metrics'])
    assert task_summary['sigma'] > 0


def test_balancing_methods_run_in_the_trainer(runs):
  dwa = runs[0]['mmoe'][1]
  assert (dwa['training']['loss_weighting'], dwa['training']['gradient_surgery']) == (
      'dwa', 'pcgrad')
  names = list(dwa['tasks'])
  losses = np.array([dwa['tasks'][n]['train_loss_by_epoch'] for n in names])
  weights = np.array([dwa['tasks'][n]['loss_weight_by_epoch'] for n in names])
  assert losses.shape == weights.shape == (3, 10)
  np.testing.assert_array_equal(weights[:, :2], 1.0)
  ratios = losses[:, 8] / losses[:, 7]  # the last epoch's weights: DWA of the two before
  np.testing.assert_allclose(weights[:, 9], 3 * np.exp(ratios / 2) / np.exp(ratios / 2).sum(),
                             rtol=1e-4)
  gradnorm = runs[0]['esmm'][1]
  assert gradnorm['training']['loss_weighting'] == 'gradnorm'
  final = [gradnorm['tasks'][n]['loss_weight'] for n in gradnorm['tasks']]
  assert sum(final) == pytest.approx(3.0, rel=1e-5) and min(final) > 0
  assert not np.allclose(final, 1.0)


def test_the_summary_says_which_epoch_was_exported_and_why(runs):
  ple = runs[0]['ple'][1]['training']
  stopping = ple['early_stopping']
  assert stopping['monitor'] == 'loss' and stopping['patience'] == 2
  losses = ple['eval_loss_by_epoch']
  # every epoch trained was validated; the exported one has the lowest validation loss
  assert len(losses) == stopping['epochs_trained'] <= 10
  assert ple['exported_epoch'] == losses.index(min(losses)) + 1
  assert stopping['best_value'] == pytest.approx(min(losses), rel=1e-6)
  assert ple['exported_because'].startswith('lowest total validation loss')
  assert stopping['stopped_early'] == (stopping['epochs_trained'] < 10)
  mmoe = runs[0]['mmoe'][1]['training']
  assert mmoe['exported_epoch'] == 10 and mmoe['early_stopping'] is None
  assert mmoe['exported_because'] == 'the last epoch (training.early_stopping is off)'


def test_other_architectures_reuse_cached_ingestion_and_transform(runs):
  for model in MODELS:
    components = runs[0][model][1]['components']
    for name in ('LogExampleGen', 'StatisticsGen'):
      assert components[name]['state'] == 'CACHED', (model, name, components[name])
    # PLE's run adds price buckets: a change to Transform (not to ingestion), which runs again
    assert components['Transform']['state'] == ('COMPLETE' if model == 'ple' else 'CACHED')
    assert components['Trainer']['state'] == 'COMPLETE'


def test_served_model_with_price_buckets_serves_both_signatures(runs):
  """The PLE run's price bucket and piecewise-linear bins are computed inside the served
  graph: both signatures give the same answer, and a price far outside the training range
  lands in the last bucket and fills every bin. The served graph also holds the price's
  periodic and piecewise-linear embeddings, a cross layer and dropout layers; repeated requests
  get the same answer (dropout is off when serving)."""
  from components import serving_requests  # pylint: disable=g-import-not-at-top
  from components.records import record_to_instance  # pylint: disable=g-import-not-at-top
  (config, summary), records = runs[0]['ple'], runs[1]
  loaded = tf.saved_model.load(summary['push']['path'])
  records = records[:20] + [dict(records[0], item_price=1e30)]
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in records]
  by_examples = loaded.signatures['serving_default'](examples=tf.constant(examples))
  signature = loaded.signatures['predict_instances']
  instances = json.loads(json.dumps([record_to_instance(r, config) for r in records]))
  by_instances = signature(**{k: tf.constant(v) for k, v in
                              serving_requests.instances_to_inputs(signature, instances).items()})
  for task in config.tasks:
    assert np.all(np.isfinite(by_examples[task.name].numpy()))
    np.testing.assert_allclose(by_instances[task.name].numpy(), by_examples[task.name].numpy(),
                               atol=1e-6)
  transform = loaded.signatures['transform_features']
  labelled = [record_to_example(r, config).SerializeToString() for r in records]
  buckets = transform(examples=tf.constant(labelled))['item_price__bucket'].numpy()
  assert set(buckets.tolist()) <= set(range(8)) and len(set(buckets.tolist())) > 2
  assert buckets[-1] == 7
  bins = np.stack([transform(examples=tf.constant(labelled))[f'item_price__piece{t}'].numpy()
                   for t in range(6)], axis=1)
  assert np.all((bins >= 0) & (bins <= 1)) and bins[-1].tolist() == [1.0] * 6
  assert len({tuple(row) for row in bins.tolist()}) > 2  # the prices differ, so do the bins
  again = loaded.signatures['serving_default'](examples=tf.constant(examples))
  for task in config.tasks:
    np.testing.assert_array_equal(again[task.name].numpy(), by_examples[task.name].numpy())
  import trainer.models  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  network = tf.keras.models.load_model(summary['push']['path'], compile=False)
  names = {layer.name for layer in network.layers}
  assert {'item_price_periodic', 'item_price_piecewise_linear', 'embedding_dropout',
          'cross_0'} <= names, sorted(names)
  # and serve-check (warmup requests, gRPC and REST against the Evaluator's predictions, NaN
  # refused) passes on this pushed version as on the default model
  from pipeline.serve_check import serve_check  # pylint: disable=g-import-not-at-top
  report = serve_check(summary['push']['path'])
  assert report['ok'], report


def test_served_esmm_returns_ctr_cvr_ctcvr(runs):
  (config, summary), records = runs[0]['esmm'], runs[1]
  serve = tf.saved_model.load(summary['push']['path']).signatures['serving_default']
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in records]
  outputs = {k: v.numpy() for k, v in serve(examples=tf.constant(examples)).items()}
  assert set(outputs) == {'click', 'conversion', 'dwell', 'ctr', 'cvr', 'ctcvr',
                          config.serving.score.name}  # the shared run's ranking score
  np.testing.assert_allclose(outputs['ctcvr'], outputs['ctr'] * outputs['cvr'], rtol=1e-5)
  assert np.all(outputs['ctcvr'] <= outputs['ctr'] + 1e-7)
  np.testing.assert_array_equal(outputs['conversion'], outputs['ctcvr'])


def test_esmm_trains_on_every_impression_and_reports_pcvr_on_the_conversion_space(runs):
  """The sample's conversion task is defined where click == 1. ESMM still judges its
  conversion output (pCTCVR) on every impression, and evaluates its `cvr` output (pCVR) on the
  clicked ones, which the summary shows next to the task."""
  _, summary = runs[0]['esmm']
  conversion = summary['tasks']['conversion']
  evaluated = summary['ingestion']['examples_by_split']['eval']
  clicked = summary['ingestion']['task_rows_by_split']['conversion']['eval']
  assert 0 < clicked < evaluated
  assert conversion['metrics']['example_count'] == evaluated
  assert conversion['rows'] == summary['ingestion']['examples_by_split']
  cvr = conversion['cvr']
  assert cvr['metrics']['example_count'] == clicked
  assert cvr['rows']['eval'] == clicked
  assert 0.5 < cvr['metrics']['auc'] < 1.0
  # The conversion rate among clicks is the rate over every impression divided by the CTR.
  assert cvr['metrics']['mean_label'] == pytest.approx(
      conversion['metrics']['mean_label'] / summary['tasks']['click']['metrics']['mean_label'],
      rel=1e-6)
