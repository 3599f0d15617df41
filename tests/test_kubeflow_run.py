"""The compiled Kubeflow spec, executed as Kubeflow Pipelines v2 executes it.

`mtlp compile`'s YAML runs through tests/kfp_backend.py, which reproduces what the open-source
KFP v2 driver and launcher do with each task (and, in `vertex` mode, Vertex AI Pipelines):
every task's real container command runs in its own process, on a small generated log, two
days in a row, the way a daily schedule runs it. Both backends run side by side (two
threads), each with its own logs, object store, push and state directories.
"""

import concurrent.futures
import dataclasses
import json
import os
import shutil

import pytest
import yaml
from tfx.components.example_gen.utils import date_to_span_number

import kfp_backend
from conftest import sample_config
from pipeline.config import Threshold
from pipeline.kubeflow import compiler
from pipeline.kubeflow import entrypoint
from pipeline.sample_logs import generate_logs

# The default pipeline root of the standard KFP manifests (backend/src/v2/config/env.go).
MINIO_ROOT = 'minio://mlpipeline/v2/artifacts'
DAYS = ('day=2026-11-01', 'day=2026-11-02')
SPANS = (date_to_span_number(2026, 11, 1), date_to_span_number(2026, 11, 2))
ROWS = 6000  # over both days
MODES = ('oss', 'vertex')


def kubeflow_config(root, pipeline_root=MINIO_ROOT, input_base=None):
  """The sample config for a small, fast run. The comparison with the served model runs, with
  a wide tolerance: these runs are about orchestration, not model quality."""
  config = sample_config(
      data={'input_base': str(input_base or root / 'logs')},
      serving={'push_dir': str(root / 'serving')},
      kubeflow={'image': 'mtl-pipeline:test', 'pipeline_root': pipeline_root,
                'state_dir': str(root / 'state')},
      training={'train_steps': 60, 'eval_steps': 20})
  tasks = tuple(dataclasses.replace(
      t, thresholds={'auc': Threshold(min=0.5)} if t.type == 'binary' else {},
      max_regression=({'auc': 0.5} if t.type == 'binary'
                      else {'root_mean_squared_error': '90%'})) for t in config.tasks)
  return dataclasses.replace(config, tasks=tasks)


def compile_spec(config, path):
  with open(compiler.compile_pipeline(config, str(path))) as f:
    return yaml.safe_load(f)


def step_modules(spec):
  """The modules every task imports (forked from once, see kfp_backend)."""
  executors = spec['deploymentSpec']['executors'].values()
  return sorted({a[a.index('--executor_class_path') + 1].rsplit('.', 1)[0]
                 for a in (e['container']['args'] for e in executors)} |
                {'pipeline.kubeflow.entrypoint'})


def _two_days(mode, root):
  generate_logs(str(root / 'all'), rows=ROWS, days=2, seed=5)
  (root / 'logs').mkdir()
  shutil.move(str(root / 'all' / DAYS[0]), str(root / 'logs'))
  config = kubeflow_config(root)
  spec = compile_spec(config, root / 'pipeline.yaml')
  backend = kfp_backend.Backend(str(root / 'kfp'), mode=mode, preload=step_modules(spec))
  # On Vertex the root is gs://, which tf.io.gfile writes directly: a local directory here.
  pipeline_root = MINIO_ROOT if mode == 'oss' else str(root / 'gcs')
  day1 = backend.run(spec, pipeline_root)
  shutil.move(str(root / 'all' / DAYS[1]), str(root / 'logs'))
  day2 = backend.run(spec, pipeline_root)
  return {'mode': mode, 'config': config, 'spec': spec, 'backend': backend, 'root': root,
          'runs': (day1, day2)}


@pytest.fixture(scope='module')
def schedules(tmp_path_factory):
  with concurrent.futures.ThreadPoolExecutor(len(MODES)) as pool:
    futures = {mode: pool.submit(_two_days, mode, tmp_path_factory.mktemp(f'kfp-{mode}'))
               for mode in MODES}
    return {mode: future.result() for mode, future in futures.items()}


@pytest.fixture(params=MODES)
def schedule(request, schedules):
  return schedules[request.param]


def _number(metadata, key):
  return int(metadata[key])


def test_day_one_ingests_the_latest_span_trains_blesses_and_pushes(schedule):
  day1 = schedule['runs'][0]
  assert {t.state for t in day1.tasks.values()} == {'RUN'}
  examples = day1.artifact('LogExampleGen', 'examples')['metadata']
  assert int(examples['custom:span']) == SPANS[0]
  quarantine = day1.artifact('LogExampleGen', 'quarantine')['metadata']
  assert json.loads(quarantine['spans'])[-1] == SPANS[0]
  assert _number(quarantine, 'num_ingested') == ROWS // 2
  assert _number(day1.artifact('Evaluator', 'blessing')['metadata'], 'blessed') == 1
  pushed = day1.artifact('Pusher', 'pushed_model')['metadata']
  assert _number(pushed, 'pushed') == 1
  assert os.path.exists(os.path.join(pushed['pushed_destination'], 'saved_model.pb'))


def test_day_two_ingests_the_new_window_and_replaces_the_served_model(schedule):
  day1, day2 = schedule['runs']
  # LogExampleGen is never served from the cache; what did not change is.
  assert day2.tasks['LogExampleGen'].state == 'RUN'
  assert day2.tasks['ImportSchemaGen'].state == 'CACHED'
  assert day2.tasks['ImportSchemaGen'].outputs == day1.tasks['ImportSchemaGen'].outputs
  assert {n for n, t in day2.tasks.items() if t.state == 'RUN'} == (
      set(day2.tasks) - {'ImportSchemaGen'})
  examples = day2.artifact('LogExampleGen', 'examples')['metadata']
  assert int(examples['custom:span']) == SPANS[1]
  quarantine = day2.artifact('LogExampleGen', 'quarantine')['metadata']
  assert json.loads(quarantine['spans'])[-2:] == list(SPANS)  # the rolling window
  assert _number(quarantine, 'num_ingested') == ROWS
  # The Evaluator compared with the model day 1 pushed; day 2's model is pushed next to it.
  served = day1.artifact('Pusher', 'pushed_model')['metadata']['pushed_version']
  for key in ('blessing', 'evaluation'):
    assert _number(day2.artifact('Evaluator', key)['metadata'], 'baseline_version') == int(
        served)
  assert _number(day2.artifact('Evaluator', 'blessing')['metadata'], 'blessed') == 1
  pushed = day2.artifact('Pusher', 'pushed_model')['metadata']
  assert _number(pushed, 'pushed') == 1 and pushed['pushed_version'] != served
  config = schedule['config']
  versions = os.listdir(os.path.join(config.serving.push_dir, config.serving.model_name))
  assert sorted(versions) == sorted([served, pushed['pushed_version']])


def test_open_source_backend_hands_over_empty_types_extra_logs_and_minio_uris(schedules):
  run = schedules['oss']['runs'][1]
  backend = schedules['oss']['backend']
  executor_input = run.tasks['StatisticsGen'].executor_input
  examples = executor_input['inputs']['artifacts']['examples']['artifacts'][0]
  assert examples['type'] == {'instanceSchema': ''} and examples['name'].isdigit()
  assert examples['uri'].startswith(MINIO_ROOT + '/')
  outputs = executor_input['outputs']['artifacts']
  assert set(outputs) == {'statistics', 'executor-logs'}
  # Everything a task wrote reached the object store through the launcher's upload.
  statistics = run.artifact('StatisticsGen', 'statistics')
  assert statistics['uri'].startswith(MINIO_ROOT + '/')
  assert os.listdir(backend.store_path(statistics['uri']))
  logs = backend.store_path(run.artifact('StatisticsGen', 'executor-logs')['uri'])
  with open(logs) as f:
    assert 'Starting executor' in f.read()
  assert not run.tasks['LogExampleGen'].hook_ran
  blessing = run.artifact('Evaluator', 'blessing')['metadata']
  assert blessing['current_model'].startswith(MINIO_ROOT + '/'), blessing


def test_vertex_runs_the_example_gen_hook_and_keeps_types(schedules):
  run = schedules['vertex']['runs'][1]
  assert run.tasks['LogExampleGen'].hook_ran
  executor_input = run.tasks['StatisticsGen'].executor_input
  examples = executor_input['inputs']['artifacts']['examples']['artifacts'][0]
  assert examples['type']['instanceSchema'].startswith('title: tfx.Examples')
  assert set(executor_input['outputs']['artifacts']) == {'statistics'}


def test_tfx_entrypoint_alone_cannot_read_what_the_open_source_backend_hands_over(schedules):
  """Why the project's entrypoint exists: TFX's finds an artifact's class from its type."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils  # pylint: disable=g-import-not-at-top
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  run = schedules['oss']['runs'][1]
  executor_input = run.tasks['StatisticsGen'].executor_input
  spec = schedules['oss']['spec']
  args = spec['deploymentSpec']['executors']['StatisticsGen_executor']['container']['args']
  inputs_spec = json.loads(args[args.index('--json_serialized_inputs_spec_args') + 1])

  def parse(raw):
    message = json_format.ParseDict(raw, pipeline_spec_pb2.ExecutorInput())
    return (utils.parse_raw_artifact_dict(message.inputs.artifacts),
            utils.parse_raw_artifact_dict(message.outputs.artifacts))

  with pytest.raises(AttributeError):  # yaml.safe_load('') is None: no title to import
    parse(executor_input)
  fixed = entrypoint.fix_executor_input(executor_input, inputs_spec, '/mnt')
  inputs, outputs = parse(fixed)
  assert inputs['examples'][0].type_name == 'Examples'
  assert set(outputs) == {'statistics'}
  assert inputs['examples'][0].uri.startswith('/mnt/minio/mlpipeline/v2/artifacts/')
  assert entrypoint.remote_uri(inputs['examples'][0].uri, '/mnt') == (
      executor_input['inputs']['artifacts']['examples']['artifacts'][0]['uri'])


def test_no_matching_partition_fails_in_log_example_gen_naming_the_pattern(tmp_path, schedules):
  del schedules  # after the schedules: the step modules are loaded once
  (tmp_path / 'logs').mkdir()
  config = kubeflow_config(tmp_path)
  spec = compile_spec(config, tmp_path / 'pipeline.yaml')
  # Only the two tasks without inputs matter here.
  spec['root']['dag']['tasks'] = {n: t for n, t in spec['root']['dag']['tasks'].items()
                                  if n in ('LogExampleGen', 'ImportSchemaGen')}
  backend = kfp_backend.Backend(str(tmp_path / 'kfp'), preload=step_modules(spec))
  with pytest.raises(kfp_backend.TaskFailed) as failed:
    backend.run(spec, MINIO_ROOT)
  assert failed.value.task == 'LogExampleGen'
  pattern = os.path.join(config.data.input_base, config.data.file_pattern)
  assert f'No log partition matches {pattern}' in failed.value.log



def test_with_kfp_caching_on_the_next_day_would_reuse_the_first_days_ingestion(tmp_path,
                                                                                schedules):
  """Why LogExampleGen is compiled with caching off: under the driver's cache-key rule its key
  does not change when a partition lands, so the second day is a cache hit of the first."""
  del schedules  # after the schedules: the step modules are loaded once
  generate_logs(str(tmp_path / 'all'), rows=200, days=2, seed=9)
  (tmp_path / 'logs').mkdir()
  shutil.move(str(tmp_path / 'all' / DAYS[0]), str(tmp_path / 'logs'))
  spec = compile_spec(kubeflow_config(tmp_path), tmp_path / 'pipeline.yaml')
  spec['root']['dag']['tasks'] = {'LogExampleGen': spec['root']['dag']['tasks']['LogExampleGen']}
  spec['root']['dag']['tasks']['LogExampleGen']['cachingOptions'] = {'enableCache': True}
  backend = kfp_backend.Backend(str(tmp_path / 'kfp'), preload=step_modules(spec))
  day1 = backend.run(spec, MINIO_ROOT)
  shutil.move(str(tmp_path / 'all' / DAYS[1]), str(tmp_path / 'logs'))
  day2 = backend.run(spec, MINIO_ROOT)
  assert day2.tasks['LogExampleGen'].state == 'CACHED'
  assert int(day2.artifact('LogExampleGen', 'examples')['metadata']['custom:span']) == SPANS[0]
  assert day2.tasks['LogExampleGen'].outputs == day1.tasks['LogExampleGen'].outputs
