"""Kubeflow Pipelines: the compiled spec, the shared graph, Beam presets, and clear API errors.

No cluster is available here. API errors are tested against a local HTTP endpoint on
127.0.0.1 that answers the way the KFP API does for these cases (and a closed port for an
unreachable host), through the real kfp client.
"""

import http.server
import json
import os
import socket
import threading

import pytest
import yaml
from kfp import components as kfp_components

from conftest import REPO, SAMPLE_CONFIG, sample_config
from pipeline import cli
from pipeline.beam_args import beam_pipeline_args
from pipeline.config import BeamConfig, ConfigError, parse_config
from pipeline.kubeflow import client as kfp_client
from pipeline.kubeflow.compiler import (ENTRYPOINT, SpecError, check_spec, compile_pipeline,
                                       create_kubeflow_pipeline)
from pipeline.local_runner import make_beam_args  # the local runner's own choice
from pipeline.pipeline import create_pipeline

GOLDEN_DAG = os.path.join(REPO, 'tests', 'golden', 'kubeflow_dag.json')
IMAGE = 'registry.example/mtl-pipeline:test'


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  config = sample_config(kubeflow={'image': IMAGE, 'pipeline_root': 'gs://bucket/root'})
  path = compile_pipeline(config, str(tmp_path_factory.mktemp('kfp') / 'pipeline.yaml'))
  with open(path) as f:
    return config, path, yaml.safe_load(f)


def _dag(spec):
  return {name: sorted(task.get('dependentTasks', []))
          for name, task in spec['root']['dag']['tasks'].items()}


def test_spec_loads_with_the_kfp_loader(compiled):
  config, path, _ = compiled
  component = kfp_components.load_component_from_file(path)
  assert component.name == config.name


def test_every_component_runs_in_the_pipeline_image(compiled):
  _, _, spec = compiled
  executors = spec['deploymentSpec']['executors']
  assert set(executors) == {f'{name}_executor' for name in _dag(spec)}
  for name, executor in executors.items():
    container = executor['container']
    assert container['image'] == IMAGE, name
    assert container['command'] == ENTRYPOINT
  assert executors['LogExampleGen_executor']['container']['args'][1] == (
      'components.log_example_gen.Executor')
  assert 'resolver' not in json.dumps(spec).lower()


def test_evaluator_finds_the_served_baseline_itself(compiled):
  """No Resolver on Kubeflow: the Evaluator's executor reads the push directory when it runs,
  and the Pusher is ours (atomic, versioned, warmup requests)."""
  config, _, spec = compiled
  executors = spec['deploymentSpec']['executors']
  assert executors['Evaluator_executor']['container']['args'][1] == (
      'components.served_baseline_evaluator.Executor')
  assert executors['Pusher_executor']['container']['args'][1] == (
      'components.serving_pusher.Executor')
  tasks = spec['root']['dag']['tasks']
  evaluator = {n: p['runtimeValue']['constant']
               for n, p in tasks['Evaluator']['inputs']['parameters'].items()}
  assert evaluator['push_dir'] == config.serving.push_dir
  assert evaluator['model_name'] == config.serving.model_name
  assert 'baseline_model' not in tasks['Evaluator']['inputs'].get('artifacts', {})
  pusher = {n: p['runtimeValue']['constant']
            for n, p in tasks['Pusher']['inputs']['parameters'].items()}
  assert pusher['keep_versions'] == config.serving.keep_versions
  assert set(tasks['Pusher']['inputs']['artifacts']) == {'model', 'model_blessing',
                                                         'evaluation'}


def test_span_window_parameters_are_in_the_spec(compiled):
  config, _, spec = compiled
  params = spec['root']['dag']['tasks']['LogExampleGen']['inputs']['parameters']
  constant = {name: p['runtimeValue']['constant'] for name, p in params.items()}
  assert constant['window_spans'] == config.data.window_spans
  assert constant['span_pattern'] == 'day={YYYY}-{MM}-{DD}/*.jsonl*'


def test_beam_components_get_the_configured_beam_args(compiled):
  config, _, spec = compiled
  executors = spec['deploymentSpec']['executors']
  for name in ('LogExampleGen', 'StatisticsGen', 'Transform', 'Evaluator'):
    args = executors[f'{name}_executor']['container']['args']
    assert args[6:] == beam_pipeline_args(config.beam, image=IMAGE), name


def test_dag_matches_the_golden_description(compiled):
  with open(GOLDEN_DAG) as f:
    assert _dag(compiled[2]) == json.load(f)


def test_local_and_kubeflow_graphs_have_the_same_components_and_edges(compiled, tmp_path):
  config, _, spec = compiled
  local = create_pipeline(config, str(tmp_path))
  edges = {c.id: sorted(n.id for n in c.upstream_nodes) for c in local.components}
  assert edges == _dag(spec)
  kubeflow = create_kubeflow_pipeline(config)
  assert {c.id for c in kubeflow.components} == set(edges)


def test_beam_presets():
  assert beam_pipeline_args(BeamConfig()) == [
      '--runner=DirectRunner', '--direct_running_mode=in_memory', '--direct_num_workers=1']
  assert beam_pipeline_args(BeamConfig(direct_running_mode='multi_processing',
                                       direct_num_workers=0))[1:] == [
      '--direct_running_mode=multi_processing', '--direct_num_workers=0']
  dataflow = beam_pipeline_args(BeamConfig(runner='dataflow', project='p', region='r',
                                           temp_location='gs://t'), image=IMAGE)
  assert dataflow == ['--runner=DataflowRunner', '--project=p', '--region=r',
                      '--temp_location=gs://t', f'--sdk_container_image={IMAGE}']
  for runner in ('flink', 'spark'):
    args = beam_pipeline_args(BeamConfig(runner=runner, job_endpoint='jobs:8099',
                                         extra_args=('--parallelism=4',)), image=IMAGE)
    assert args == ['--runner=PortableRunner', '--job_endpoint=jobs:8099',
                    '--environment_type=DOCKER', f'--environment_config={IMAGE}',
                    '--parallelism=4']
  assert make_beam_args(sample_config().beam)[0] == '--runner=DirectRunner'


def test_beam_preset_needs_its_settings():
  raw = yaml.safe_load(open(SAMPLE_CONFIG))
  raw['beam'] = {'runner': 'dataflow', 'project': 'p'}
  with pytest.raises(ConfigError, match='beam.region: required when beam.runner is dataflow'):
    parse_config(raw)
  raw['beam'] = {'runner': 'samza'}
  with pytest.raises(ConfigError, match="beam.runner: 'samza' is not one of direct"):
    parse_config(raw)


def test_window_needs_a_span_in_the_pattern():
  raw = yaml.safe_load(open(SAMPLE_CONFIG))
  raw['data']['file_pattern'] = '*/*.jsonl*'
  with pytest.raises(ConfigError, match=r'data.window_spans: 7 spans need \{SPAN\}'):
    parse_config(raw)


def test_window_patterns_cover_the_most_recent_spans():
  from components.log_example_gen import window_patterns  # pylint: disable=g-import-not-at-top
  from tfx.components.example_gen.utils import date_to_span_number  # pylint: disable=g-import-not-at-top
  latest = date_to_span_number(2026, 11, 3)
  assert window_patterns('day={YYYY}-{MM}-{DD}/*.gz', latest, 3) == [
      (latest - 2, 'day=2026-11-01/*.gz'), (latest - 1, 'day=2026-11-02/*.gz'),
      (latest, 'day=2026-11-03/*.gz')]
  assert window_patterns('span-{SPAN}/*', 5, 2) == [(4, 'span-4/*'), (5, 'span-5/*')]
  assert window_patterns('*/*', 0, 5) == [(0, '*/*')]


# ---- CLI and KFP API errors -------------------------------------------------------------------

class _KfpLikeHandler(http.server.BaseHTTPRequestHandler):
  """Answers like the KFP v2beta1 REST API for one scripted case."""
  responses = {}  # path prefix -> (status, body)

  def _answer(self):
    for prefix, (status, body) in self.responses.items():
      if self.path.startswith(prefix):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        return
    self.send_response(404)
    self.end_headers()

  do_GET = do_POST = do_DELETE = _answer

  def log_message(self, *args):
    pass


@pytest.fixture()
def kfp_api():
  servers = []

  def start(responses):
    handler = type('Handler', (_KfpLikeHandler,), {'responses': responses})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f'http://127.0.0.1:{server.server_address[1]}'

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


def _mtlp(capsys, *args):
  code = cli.main(list(args))
  return code, capsys.readouterr().err.strip()


def test_bad_cron_is_reported_before_anything_is_sent(capsys):
  code, err = _mtlp(capsys, 'schedule', '--config', SAMPLE_CONFIG, '--host',
                    'http://127.0.0.1:9', '--cron', '0 3 * * *')
  assert code == 1 and len(err.splitlines()) == 1
  assert "bad cron expression '0 3 * * *'" in err and '6 fields' in err


def test_unreachable_host_is_one_line(capsys):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]  # closed once the block ends: nothing listens there
  code, err = _mtlp(capsys, 'submit', '--config', SAMPLE_CONFIG, '--host',
                    f'http://127.0.0.1:{port}')
  assert code == 1 and len(err.splitlines()) == 1, err
  assert f'cannot reach the Kubeflow Pipelines API at http://127.0.0.1:{port}' in err
  assert 'Connection refused' in err


def test_refused_credentials_are_one_line(capsys, kfp_api):
  host = kfp_api({'/': (401, {'error_message': 'Unauthenticated: token expired', 'code': 16,
                              'message': 'Unauthenticated: token expired'})})
  code, err = _mtlp(capsys, 'unschedule', '--config', SAMPLE_CONFIG, '--host', host)
  assert code == 1 and len(err.splitlines()) == 1, err
  assert 'refused the request (HTTP 401' in err and 'token expired' in err


def test_api_error_message_is_passed_on(capsys, kfp_api):
  host = kfp_api({'/apis/v2beta1/healthz': (200, {'multi_user': False}),
                  '/apis/v2beta1/recurringruns': (500, {
                      'error_message': 'database is unavailable', 'code': 13,
                      'message': 'database is unavailable'})})
  code, err = _mtlp(capsys, 'unschedule', '--config', SAMPLE_CONFIG, '--host', host)
  assert code == 1 and len(err.splitlines()) == 1, err
  assert err.endswith('answered HTTP 500: database is unavailable')


# ---- submit / schedule at the client-call boundary ----------------------------------------------

class _RecordingClient:
  """Stands in for kfp.Client at the call boundary: records calls, returns KFP-shaped ids."""

  def __init__(self, existing_pipeline=None):
    self.calls = []
    self.existing_pipeline = existing_pipeline

  def _record(self, name, *args, **kwargs):
    self.calls.append((name, args, kwargs))

  def get_pipeline_id(self, name):
    self._record('get_pipeline_id', name)
    return self.existing_pipeline

  def upload_pipeline(self, path, pipeline_name):
    kfp_components.load_component_from_file(path)  # a real, loadable spec was uploaded
    self._record('upload_pipeline', path, pipeline_name=pipeline_name)
    return type('P', (), {'pipeline_id': 'p-1'})

  def list_pipeline_versions(self, pipeline_id, **kwargs):
    self._record('list_pipeline_versions', pipeline_id, **kwargs)
    version = type('V', (), {'pipeline_version_id': 'v-1'})
    return type('R', (), {'pipeline_versions': [version]})

  def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
    kfp_components.load_component_from_file(path)
    self._record('upload_pipeline_version', path, pipeline_version_name=pipeline_version_name,
                 pipeline_id=pipeline_id)
    return type('V', (), {'pipeline_version_id': 'v-2'})

  def create_experiment(self, name):
    self._record('create_experiment', name)
    return type('E', (), {'experiment_id': 'e-1'})

  def run_pipeline(self, experiment_id, job_name, **kwargs):
    self._record('run_pipeline', experiment_id, job_name, **kwargs)
    return type('R', (), {'run_id': 'r-1'})

  def create_recurring_run(self, experiment_id, job_name, **kwargs):
    self._record('create_recurring_run', experiment_id, job_name, **kwargs)
    return type('J', (), {'recurring_run_id': 'j-1'})


def test_submit_uploads_a_new_version_of_an_existing_pipeline(monkeypatch):
  client = _RecordingClient(existing_pipeline='p-0')
  monkeypatch.setattr(kfp_client, '_client', lambda host: client)
  result = kfp_client.submit(sample_config(), 'http://kfp:8080', version_name='v')
  assert result == {'pipeline_id': 'p-0', 'version_id': 'v-2', 'run_id': 'r-1',
                    'url': 'http://kfp:8080/#/runs/details/r-1'}
  names = [c[0] for c in client.calls]
  assert names == ['get_pipeline_id', 'upload_pipeline_version', 'create_experiment',
                   'run_pipeline']
  assert client.calls[3][2] == {'pipeline_id': 'p-0', 'version_id': 'v-2',
                                'pipeline_root': sample_config().kubeflow.pipeline_root}


def test_schedule_creates_one_recurring_run_without_catch_up(monkeypatch):
  client = _RecordingClient(existing_pipeline=None)
  monkeypatch.setattr(kfp_client, '_client', lambda host: client)
  config = sample_config()
  result = kfp_client.schedule(config, 'http://kfp:8080', '0 0 3 * * *')
  assert result['recurring_run_id'] == 'j-1'
  assert [c[0] for c in client.calls] == ['get_pipeline_id', 'upload_pipeline',
                                          'list_pipeline_versions', 'create_experiment',
                                          'create_recurring_run']
  _, (experiment_id, job_name), kwargs = client.calls[-1]
  assert (experiment_id, job_name) == ('e-1', f'{config.name}-scheduled')
  assert kwargs == {'cron_expression': '0 0 3 * * *', 'max_concurrency': 1,
                    'no_catchup': True, 'pipeline_id': 'p-1', 'version_id': 'v-1',
                    'pipeline_root': config.kubeflow.pipeline_root}


def test_trainer_step_can_train_as_a_tfjob_with_the_same_graph(tmp_path):
  """`kubeflow.trainer: tfjob` changes what the Trainer step's executor does, not the graph:
  same nodes and edges (the golden DAG), the Trainer step still named Trainer, its executor
  ours, and the TFJob settings in the config it receives."""
  config = sample_config(kubeflow={'image': IMAGE, 'pipeline_root': 'gs://bucket/root',
                                   'trainer': 'tfjob', 'worker_memory': '16Gi'},
                         training={'workers': 4})
  with open(compile_pipeline(config, str(tmp_path / 'pipeline.yaml'))) as f:
    spec = yaml.safe_load(f)
  with open(GOLDEN_DAG) as f:
    assert _dag(spec) == json.load(f)
  trainer = spec['deploymentSpec']['executors']['Trainer_executor']['container']
  assert trainer['image'] == IMAGE
  assert trainer['args'][1] == 'components.distributed_trainer.Executor'
  parameters = spec['root']['dag']['tasks']['Trainer']['inputs']['parameters']
  custom_config = json.loads(parameters['custom_config']['runtimeValue']['constant'])
  received = json.loads(custom_config['pipeline_config'])
  assert received['kubeflow']['trainer'] == 'tfjob' and received['training']['workers'] == 4
  assert received['kubeflow']['worker_memory'] == '16Gi'


# ---- what the Kubeflow Pipelines backend accepts (executed in test_kubeflow_run.py) --------

def test_spec_is_schema_2_1_with_constant_parameters(compiled):
  _, _, spec = compiled
  assert spec['schemaVersion'] == '2.1.0'
  for name, task in spec['root']['dag']['tasks'].items():
    for parameter, value in task.get('inputs', {}).get('parameters', {}).items():
      assert set(value['runtimeValue']) == {'constant'}, (name, parameter)
  check_spec(spec)


def test_only_log_example_gen_is_kept_out_of_the_cache(compiled):
  """KFP's cache key holds LogExampleGen's parameters and image, which do not change from one
  day to the next: it would be a cache hit of yesterday's ingestion."""
  _, _, spec = compiled
  caching = {name: task['cachingOptions']['enableCache']
             for name, task in spec['root']['dag']['tasks'].items()}
  assert caching.pop('LogExampleGen') is False
  assert set(caching.values()) == {True}


def test_a_spec_the_api_server_would_refuse_is_not_uploaded(compiled, tmp_path):
  config, path, spec = compiled
  old = tmp_path / 'old.yaml'
  old.write_text(yaml.safe_dump(dict(spec, schemaVersion='2.0.0')))
  client = _RecordingClient()
  with pytest.raises(kfp_client.KubeflowError, match="schema version '2.0.0'.*only 2.1.0"):
    kfp_client.upload(client, config, str(old), 'v')
  assert client.calls == []
  with pytest.raises(SpecError, match='constantValue'):
    legacy = json.loads(json.dumps(spec))
    legacy['root']['dag']['tasks']['Pusher']['inputs']['parameters']['model_name'] = {
        'runtimeValue': {'constantValue': {'stringValue': 'm'}}}
    check_spec(legacy)
  kfp_client.upload(client, config, path, 'v')
  assert client.calls[0][0] == 'get_pipeline_id'


@pytest.mark.parametrize('overrides, message', [
    ({'kubeflow': {'pipeline_root': '/data/root'}},
     r"kubeflow.pipeline_root: '/data/root' is not object storage"),
    ({'kubeflow': {'pipeline_root': 'minio://mlpipeline/v2/artifacts'}},
     r"kubeflow.state_dir: 'minio://mlpipeline/v2/artifacts/state' .*: set kubeflow.state_dir$"),
    ({'kubeflow': {'pipeline_root': 'gs://b/root'}, 'serving': {'push_dir': 's3://b/serving'}},
     r"serving.push_dir: 's3://b/serving' is opened by the steps themselves"),
    ({'kubeflow': {'pipeline_root': 's3://b/root', 'state_dir': '/mnt/state'},
      'beam': {'runner': 'dataflow', 'project': 'p', 'region': 'r', 'temp_location': 'gs://t'}},
     r"kubeflow.pipeline_root: 's3://b/root' reaches the steps only through local copies.*"
     r"beam.runner"),
])
def test_storage_the_steps_cannot_reach_is_refused_naming_the_key(overrides, message, tmp_path):
  with pytest.raises(ConfigError, match=message):
    compile_pipeline(sample_config(**overrides), str(tmp_path / 'p.yaml'))


def test_custom_artifact_type_is_a_kfp_title_and_an_importable_class():
  from components import QuarantinedRecords  # pylint: disable=g-import-not-at-top
  from tfx.orchestration.kubeflow.v2 import compiler_utils  # pylint: disable=g-import-not-at-top
  from tfx.utils import import_utils  # pylint: disable=g-import-not-at-top
  title = QuarantinedRecords.TYPE_NAME
  assert compiler_utils._SCHEMA_TITLE_RE.match(title)  # pylint: disable=protected-access
  assert import_utils.import_class_by_path(title) is QuarantinedRecords


def test_entrypoint_maps_mounted_uris_both_ways_and_leaves_gs_alone():
  from pipeline.kubeflow import entrypoint  # pylint: disable=g-import-not-at-top
  for uri, local in [('minio://mlpipeline/v2/a/b', '/minio/mlpipeline/v2/a/b'),
                     ('s3://bucket/a', '/s3/bucket/a')]:
    assert entrypoint.local_path(uri, '/') == local
    assert entrypoint.remote_uri(local, '/') == uri
  assert entrypoint.local_path('gs://bucket/a', '/') == ''
  assert entrypoint.remote_uri('/data/a', '/') == '/data/a'


def test_log_example_gen_resolves_the_span_as_tfx_driver_does(tmp_path):
  """Open-source KFP runs no ExampleGen driver; the executor's own resolution must match it."""
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
  from tfx.orchestration.kubeflow.v2.file_based_example_gen import driver  # pylint: disable=g-import-not-at-top
  from tfx.components.example_gen.utils import date_to_span_number  # pylint: disable=g-import-not-at-top
  from components.log_example_gen import resolve_input  # pylint: disable=g-import-not-at-top
  from pipeline.sample_logs import generate_logs  # pylint: disable=g-import-not-at-top
  generate_logs(str(tmp_path / 'logs'), rows=40, days=3, seed=2)
  input_config = json.dumps({'splits': [{'name': 'logs',
                                         'pattern': 'day={YYYY}-{MM}-{DD}/*.jsonl*'}]})
  properties = {'input_base': str(tmp_path / 'logs'), 'input_config': input_config}
  output_file = tmp_path / 'driver' / 'output_metadata.json'
  executor_input = json_format.ParseDict({
      'inputs': {'parameterValues': properties},
      'outputs': {'outputFile': str(output_file), 'artifacts': {'examples': {'artifacts': [{
          'uri': str(tmp_path / 'examples'), 'type': {'schemaTitle': 'tfx.Examples'}}]}}}},
      pipeline_spec_pb2.ExecutorInput())
  inputs_spec = json_format.ParseDict(
      {'parameters': {k: {'parameterType': 'STRING'} for k in properties}},
      pipeline_spec_pb2.ComponentInputsSpec())
  driver._run_driver(executor_input, inputs_spec)  # pylint: disable=protected-access
  by_driver = json.loads(output_file.read_text())['parameterValues']
  ours = resolve_input(dict(properties))
  assert ours['span'] == by_driver['span'] == date_to_span_number(2026, 11, 3)
  assert ours['input_fingerprint'] == by_driver['input_fingerprint']
  assert 'version' not in by_driver and ours['version'] is None
  assert json.loads(ours['input_config']) == json.loads(by_driver['input_config'])
  assert 'day=2026-11-03' in ours['input_config']
  # A driver's result (Vertex, local runs) is kept, its float span made an int.
  assert resolve_input(dict(properties, **by_driver))['span'] == ours['span']
  assert isinstance(resolve_input(dict(properties, **by_driver))['span'], int)


def test_vertex_pipeline_job_takes_the_same_yaml(compiled):
  """What a Vertex AI Pipelines user submits (docs/kubeflow.md): the SDK's PipelineJob built
  from the compiled file, as it would be sent (no request is made)."""
  from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
  from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  config, path, spec = compiled
  job = aiplatform.PipelineJob(
      display_name=config.name, template_path=path,
      pipeline_root=config.kubeflow.pipeline_root, project='my-project',
      location='us-central1', credentials=AnonymousCredentials())
  request = job.to_dict()
  assert request['runtimeConfig'] == {'gcsOutputDirectory': config.kubeflow.pipeline_root}
  sent = request['pipelineSpec']
  assert sent['schemaVersion'] == '2.1.0'
  assert sent['root'] == spec['root']  # caching choices included: enable_caching left unset
  assert sent['deploymentSpec'] == spec['deploymentSpec']
