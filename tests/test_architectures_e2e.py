"""MMoE and ESMM through the whole local pipeline, in a copy of the shared run's directory:
both reuse its cached ingestion and Transform from ML Metadata (the model and the tasks'
thresholds and inputs are not part of what ingestion and Transform receive)."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
import tensorflow as tf

from components.records import record_to_example
from conftest import copy_e2e_run
from pipeline.config import Threshold

MODELS = {
    'mmoe': {'type': 'mmoe', 'num_experts': 3, 'expert_units': [32]},
    'esmm': {'type': 'esmm', 'esmm_click_task': 'click', 'esmm_conversion_task': 'conversion'},
}


@pytest.fixture(scope='module')
def runs(e2e_run, tmp_path_factory):
  from pipeline.local_runner import run_local  # pylint: disable=g-import-not-at-top
  root = copy_e2e_run(e2e_run, tmp_path_factory.mktemp('architectures') / 'copy')
  results = {}
  for name, model in MODELS.items():
    config = e2e_run['config'].with_overrides(
        serving={'push_dir': str(root / f'serving-{name}')},
        training={'train_steps': 100, 'eval_steps': 20}, model=model)
    tasks = []
    for task in config.tasks:
      if task.type == 'binary':
        task = dataclasses.replace(task, thresholds={'auc': Threshold(min=0.55)})
      if name == 'mmoe' and task.name == 'dwell':
        task = dataclasses.replace(task, inputs_from=('click',))
      tasks.append(task)
    config = dataclasses.replace(config, tasks=tuple(tasks))
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


def test_other_architectures_reuse_cached_ingestion_and_transform(runs):
  for model in MODELS:
    components = runs[0][model][1]['components']
    for name in ('LogExampleGen', 'StatisticsGen', 'Transform'):
      assert components[name]['state'] == 'CACHED', (model, name, components[name])
    assert components['Trainer']['state'] == 'COMPLETE'


def test_served_esmm_returns_ctr_cvr_ctcvr(runs):
  (config, summary), records = runs[0]['esmm'], runs[1]
  serve = tf.saved_model.load(summary['push']['path']).signatures['serving_default']
  examples = [record_to_example(r, config, with_labels=False).SerializeToString()
              for r in records]
  outputs = {k: v.numpy() for k, v in serve(examples=tf.constant(examples)).items()}
  assert set(outputs) == {'click', 'conversion', 'dwell', 'ctr', 'cvr', 'ctcvr'}
  np.testing.assert_allclose(outputs['ctcvr'], outputs['ctr'] * outputs['cvr'], rtol=1e-5)
  assert np.all(outputs['ctcvr'] <= outputs['ctr'] + 1e-7)
  np.testing.assert_array_equal(outputs['conversion'], outputs['ctcvr'])
