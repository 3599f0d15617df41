"""DistributedTrainer: TFX's Trainer, training on one or several workers.

TFX's Trainer calls `run_fn` once, in its own process. This component keeps the Trainer's
inputs, outputs and `run_fn` (`trainer.run.run_fn`, which builds MultiWorkerMirroredStrategy
from `TF_CONFIG`) and decides where the workers run, from the config it already receives:

- `training.workers: 1` (default): in-process, exactly TFX's Trainer.
- `training.workers: N > 1`: N local worker processes on 127.0.0.1, each with a free port and
  its own `TF_CONFIG`, talking over gRPC. Each runs TFX's Trainer executor (`main()` below),
  so `run_fn` sees the same `FnArgs` as in-process; worker 0 is the chief. Their output is
  forwarded, prefixed `[worker i]`. When all exit 0 the step succeeds. When one fails:
  - killed (by a signal), or lost/could not reach another worker (exit code
    `EXIT_PEER_LOST`): the others are stopped and the whole group is started again, up to
    `training.worker_restarts` times; `BackupAndRestore` makes it resume from the last epoch's
    backup. After the last restart, the step fails with that worker's error;
  - any other error (a bad config, a NaN loss, bad data): the others are stopped and the step
    fails at once with the failing worker's error (its exception, or the end of its output).
  Nothing waits forever: joining the cluster is bounded by
  `training.worker_start_timeout_seconds`, and a dead worker is noticed by the launcher at once
  (and by the others through the cluster's heartbeat within about 10 s).
- `kubeflow.trainer: tfjob`, when the step runs in a Kubernetes pod (Kubeflow Pipelines): a
  Kubeflow Training Operator TFJob of `training.workers` pods in `kubeflow.image`, each
  running the same worker command (the operator sets `TF_CONFIG`; `tfjob_manifest`). The step
  creates it, waits for it to succeed or fail, and on failure reports each failed pod's error
  (its termination message, which the worker command writes). Outside a cluster, the same
  config trains with local workers.

After training, the step checks that the chief wrote the serving model (`saved_model.pb`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import logging
from tfx import types
from tfx import v1 as tfx
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import json_utils
from tfx.utils import path_utils

from pipeline.config import PipelineConfig, TrainingConfig
from trainer.preprocessing import CONFIG_KEY

# A worker exits with this code when it lost, or could not reach, another worker: the group
# may be restarted (the Training Operator's ExitCode policy restarts codes 128-255; Linux has
# no signal 72, so it is not mistaken for a worker killed by a signal, 128 + signal).
EXIT_PEER_LOST = 200
EXIT_ERROR = 1
WORKER_MODULE = 'components.distributed_trainer'
_POLL_SECONDS = 0.2
_STOP_GRACE_SECONDS = 5.0
_TAIL_LINES = 10

# TFJob (Kubeflow Training Operator, API kubeflow.org/v1).
TFJOB_GROUP = 'kubeflow.org'
TFJOB_VERSION = 'v1'
TFJOB_PLURAL = 'tfjobs'
TFJOB_CONTAINER = 'tensorflow'  # the operator finds the training container by this name
TFJOB_PORT = 2222               # the operator's default TF port, named tfjob-port
JOB_NAME_LABEL = 'training.kubeflow.org/job-name'
REPLICA_INDEX_LABEL = 'training.kubeflow.org/replica-index'
TERMINATION_LOG = '/dev/termination-log'
TFJOB_TTL_SECONDS = 7 * 24 * 3600  # finished TFJobs (and their pods' logs) are kept a week
_SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace'


class DistributedTrainingError(RuntimeError):
  """A training worker (local process or TFJob pod) failed; the message carries its error."""


# ---------------------------------------------------------------------------------------------
# What every worker runs: TFX's Trainer executor on the step's artifacts.


def job_description(input_dict: Dict[str, List[types.Artifact]],
                    output_dict: Dict[str, List[types.Artifact]],
                    exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  """The Trainer step's inputs, outputs and properties as JSON-able data (`worker_command`)."""
  def artifacts(d):
    return {key: [a.to_json_dict() for a in values] for key, values in d.items()}
  return {'input_dict': artifacts(input_dict), 'output_dict': artifacts(output_dict),
          'exec_properties': json.loads(json_utils.dumps(exec_properties))}


def job_for_local_run(run_dir: str, config: PipelineConfig, output_dir: str) -> Dict[str, Any]:
  """The Trainer step's job description for the Transform output of a finished local run
  (`run_local`), writing the model and model run under `output_dir`: trains on a run's data
  with workers outside the pipeline (the distributed benchmark, tests)."""
  from ml_metadata.metadata_store import metadata_store  # pylint: disable=g-import-not-at-top
  from pipeline.local_runner import metadata_config  # pylint: disable=g-import-not-at-top
  from pipeline.run_summary import read_run  # pylint: disable=g-import-not-at-top
  nodes = read_run(metadata_store.MetadataStore(metadata_config(run_dir)), config.name)['nodes']
  schema_node = nodes.get('ImportSchemaGen') or nodes['SchemaGen']

  def artifact(cls, mlmd=None, uri=None):
    a = cls()
    if mlmd is not None:
      a.set_mlmd_artifact(mlmd)
    else:
      a.uri = uri
    return a

  inputs = {
      'examples': [artifact(standard_artifacts.Examples,
                            nodes['Transform']['outputs']['transformed_examples'][0])],
      'transform_graph': [artifact(standard_artifacts.TransformGraph,
                                   nodes['Transform']['outputs']['transform_graph'][0])],
      'schema': [artifact(standard_artifacts.Schema, schema_node['outputs']['schema'][0])],
  }
  outputs = {'model': [artifact(standard_artifacts.Model, uri=os.path.join(output_dir, 'model'))],
             'model_run': [artifact(standard_artifacts.ModelRun,
                                    uri=os.path.join(output_dir, 'model_run'))]}
  return job_description(inputs, outputs, _trainer_properties(config))


def _trainer_properties(config: PipelineConfig) -> Dict[str, Any]:
  """The execution properties create_pipeline gives the Trainer."""
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  from pipeline.pipeline import RUN_FN  # pylint: disable=g-import-not-at-top
  return {
      'train_args': json_format.MessageToJson(
          tfx.proto.TrainArgs(num_steps=config.training.train_steps), sort_keys=True),
      'eval_args': json_format.MessageToJson(
          tfx.proto.EvalArgs(num_steps=config.training.eval_steps), sort_keys=True),
      'custom_config': json_utils.dumps({CONFIG_KEY: config.to_json()}),
      'run_fn': RUN_FN,
  }


def _artifacts(d: Dict[str, List[Dict[str, Any]]]) -> Dict[str, List[types.Artifact]]:
  return {key: [types.Artifact.from_json_dict(a) for a in values] for key, values in d.items()}


def worker_command(job: Dict[str, Any], error_file: Optional[str] = None,
                   python: str = 'python', parent_pid: Optional[int] = None) -> List[str]:
  """The command a worker runs (locally or in a TFJob pod); TF_CONFIG comes from the env.
  With `parent_pid` (local workers) the worker ends when that process is gone."""
  command = [python, '-m', WORKER_MODULE, '--job', json.dumps(job, sort_keys=True)]
  if error_file:
    command += ['--error-file', error_file]
  if parent_pid:
    command += ['--parent-pid', str(parent_pid)]
  return command


def _exit_with_parent(parent_pid: int) -> None:
  """Ends this worker when the launcher is gone (killed with the whole run), rather than
  training on alone."""
  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    sys.stderr.write(f'the launcher (pid {parent_pid}) is gone; this worker stops\n')
    sys.stderr.flush()
    os._exit(EXIT_ERROR)  # pylint: disable=protected-access
  threading.Thread(target=watch, name='parent-watch', daemon=True).start()


def exit_code(error: BaseException) -> int:
  """A failed worker's exit code: EXIT_PEER_LOST when another worker is gone or unreachable
  (this worker is fine; restarting the group may help), else EXIT_ERROR."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer.run import ClusterStartError  # pylint: disable=g-import-not-at-top
  lost = (ClusterStartError, tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
          tf.errors.AbortedError, tf.errors.CancelledError)
  return EXIT_PEER_LOST if isinstance(error, lost) else EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Worker entry point: `python -m components.distributed_trainer --job JSON`."""
  parser = argparse.ArgumentParser(description='one training worker of the Trainer step')
  parser.add_argument('--job', required=True, help='JSON from job_description()')
  parser.add_argument('--error-file', help='where to write the error if the worker fails')
  parser.add_argument('--parent-pid', type=int, help='end when this process is gone')
  args = parser.parse_args(argv)
  if args.parent_pid:
    _exit_with_parent(args.parent_pid)
  logging.set_verbosity(logging.INFO)
  code = 0
  try:
    job = json.loads(args.job)
    trainer_executor.GenericExecutor().Do(_artifacts(job['input_dict']),
                                          _artifacts(job['output_dict']),
                                          job['exec_properties'])
  except BaseException as e:  # pylint: disable=broad-except
    code = exit_code(e)
    traceback.print_exc()
    message = f'{type(e).__name__}: {e}'.strip()
    if args.error_file:
      try:
        with open(args.error_file, 'w') as f:
          f.write(message[-4000:])  # Kubernetes keeps at most 4 KiB of a termination message
      except OSError:
        pass
  sys.stdout.flush()
  sys.stderr.flush()
  # Exit now: TensorFlow's cluster threads can otherwise hold the process after training.
  os._exit(code)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Local workers: N processes on 127.0.0.1.


@dataclasses.dataclass
class WorkerGroupResult:
  """What a local worker group did: how many starts it took, why it was restarted, and each
  worker's output lines in the last start."""
  starts: int
  restarts_because: List[str]
  outputs: List[List[str]]


def free_ports(count: int) -> List[int]:
  """`count` distinct ports free on 127.0.0.1 now (held together while picked)."""
  sockets = []
  try:
    for _ in range(count):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(('127.0.0.1', 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def local_tf_configs(ports: Sequence[int]) -> List[Dict[str, Any]]:
  """One TF_CONFIG per worker of a cluster on 127.0.0.1 (worker 0 is the chief)."""
  cluster = {'worker': [f'127.0.0.1:{port}' for port in ports]}
  return [{'cluster': cluster, 'task': {'type': 'worker', 'index': i}}
          for i in range(len(ports))]


def _project_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Worker:
  """One worker process and a thread forwarding its output, prefixed, to our stderr. It stays
  in our process group, so whatever ends the whole run (Ctrl-C, a kill of the group) ends it
  too; and it exits by itself if we are gone (`--parent-pid`)."""

  def __init__(self, index: int, count: int, command: List[str], env: Dict[str, str],
               error_file: str):
    self.index = index
    self.name = f'worker {index} of {count}'
    self.error_file = error_file
    self.lines: List[str] = []
    self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
    self._forward = threading.Thread(target=self._read, name=f'worker-{index}-output',
                                     daemon=True)
    self._forward.start()

  def _read(self) -> None:
    for raw in iter(self.process.stdout.readline, b''):
      line = raw.decode('utf-8', 'replace').rstrip('\n')
      self.lines.append(line)
      try:
        sys.stderr.write(f'[worker {self.index}] {line}\n')
      except (ValueError, OSError):  # our stderr went away; keep collecting
        pass

  def stop(self) -> None:
    """Ends the worker: SIGTERM, then SIGKILL after a grace period (a worker blocked inside
    TensorFlow does not always act on SIGTERM)."""
    for end, wait in ((self.process.terminate, _STOP_GRACE_SECONDS), (self.process.kill, 30.0)):
      if self.process.poll() is not None:
        break
      end()
      try:
        self.process.wait(timeout=wait)
      except subprocess.TimeoutExpired:
        continue
    self._forward.join(timeout=10.0)

  @property
  def retryable(self) -> bool:
    code = self.process.returncode
    return code is not None and (code < 0 or code >= 128)

  def describe_failure(self) -> str:
    code = self.process.returncode
    if code < 0:
      how = f'was killed by {signal.Signals(-code).name}'
    elif code == EXIT_PEER_LOST:
      how = 'lost or could not reach another worker'
    else:
      how = f'failed (exit code {code})'
    error = ''
    if os.path.exists(self.error_file):
      with open(self.error_file) as f:
        error = f.read().strip()
    if not error:
      tail = [line for line in self.lines if line.strip()][-_TAIL_LINES:]
      error = 'last output:\n  ' + '\n  '.join(tail) if tail else 'no output'
    return f'{self.name} {how}: {error}'


def run_local_workers(job: Dict[str, Any], num_workers: int, training: TrainingConfig,
                      python: str = sys.executable,
                      env: Optional[Dict[str, str]] = None) -> WorkerGroupResult:
  """Runs `num_workers` worker processes on 127.0.0.1 until all succeed; see the module
  docstring for restarts and failures. Raises DistributedTrainingError."""
  base_env = dict(os.environ if env is None else env)
  base_env['TF_USE_LEGACY_KERAS'] = '1'
  base_env['PYTHONPATH'] = os.pathsep.join(
      [_project_root()] + [p for p in base_env.get('PYTHONPATH', '').split(os.pathsep) if p])
  restarts_because: List[str] = []
  with tempfile.TemporaryDirectory(prefix='mtl-workers-') as scratch:
    for start in range(1, training.worker_restarts + 2):
      ports = free_ports(num_workers)
      workers = []
      for i, tf_config in enumerate(local_tf_configs(ports)):
        error_file = os.path.join(scratch, f'start{start}-worker{i}.error')
        worker_env = dict(base_env, TF_CONFIG=json.dumps(tf_config))
        command = worker_command(job, error_file, python, parent_pid=os.getpid())
        workers.append(_Worker(i, num_workers, command, worker_env, error_file))
      logging.info('started %d training workers on 127.0.0.1 ports %s (start %d)',
                   num_workers, ', '.join(map(str, ports)), start)
      try:
        failed = _wait(workers)
      finally:
        for worker in workers:
          worker.stop()
      if failed is None:
        return WorkerGroupResult(start, restarts_because, [w.lines for w in workers])
      message = failed.describe_failure()
      if not failed.retryable or start > training.worker_restarts:
        if failed.retryable:
          message += (f' (after {training.worker_restarts} restart(s) of the workers; '
                      'training.worker_restarts)')
        raise DistributedTrainingError(message)
      restarts_because.append(message)
      logging.warning('%s; restarting all %d workers, to resume from the last backup '
                      '(restart %d of at most %d)', message, num_workers, start,
                      training.worker_restarts)
  raise AssertionError('unreachable')


def _wait(workers: List[_Worker]) -> Optional[_Worker]:
  """Waits until every worker exited 0 (returns None) or one failed (returns it; when several
  failed at once, one that did not merely lose a peer)."""
  while True:
    codes = [w.process.poll() for w in workers]
    failed = [w for w, code in zip(workers, codes) if code not in (None, 0)]
    if failed:
      failed.sort(key=lambda w: w.process.returncode == EXIT_PEER_LOST)
      return failed[0]
    if all(code == 0 for code in codes):
      return None
    time.sleep(_POLL_SECONDS)


# ---------------------------------------------------------------------------------------------
# TFJob: the manifest (tested), its submission and the wait (thin).


def tfjob_name(config: PipelineConfig, model_uri: str) -> str:
  """A DNS-1123 name, stable for one Trainer execution (from its model output's URI): when
  the step itself is retried, it finds and waits for the TFJob it already created."""
  base = re.sub(r'[^a-z0-9-]+', '-', config.name.lower()).strip('-')[:40].strip('-') or 'mtl'
  digest = hashlib.sha256(model_uri.encode('utf-8')).hexdigest()[:10]
  return f'{base}-trainer-{digest}'


def tfjob_manifest(config: PipelineConfig, job: Dict[str, Any], name: str,
                   namespace: str) -> Dict[str, Any]:
  """The TFJob (kubeflow.org/v1) training with `training.workers` pods of `kubeflow.image`.

  Worker pods only, no Chief replica: worker 0 is the chief, as in the local launcher.
  `restartPolicy: ExitCode` restarts a pod that was killed (evicted, out of memory) or lost
  another worker (exit codes 128-255, EXIT_PEER_LOST) and resumes from the backup; any other
  error (1-127) fails the job at once. `runPolicy.backoffLimit` caps the restarts and
  `activeDeadlineSeconds` the whole job; `successPolicy: AllWorkers` waits for every worker.
  """
  kubeflow = config.kubeflow
  requests = {'cpu': kubeflow.worker_cpu, 'memory': kubeflow.worker_memory}
  limits = dict(requests)
  if kubeflow.worker_gpus:
    limits['nvidia.com/gpu'] = str(kubeflow.worker_gpus)
  labels = {'app.kubernetes.io/name': 'mtl-pipeline', 'app.kubernetes.io/component': 'trainer',
            'mtl-pipeline/pipeline': re.sub(r'[^A-Za-z0-9_.-]', '-', config.name)[:63]}
  container = {
      'name': TFJOB_CONTAINER,
      'image': kubeflow.image,
      'command': worker_command(job, TERMINATION_LOG)[:3],
      'args': worker_command(job, TERMINATION_LOG)[3:],
      'env': [{'name': 'TF_USE_LEGACY_KERAS', 'value': '1'},
              {'name': 'PYTHONUNBUFFERED', 'value': '1'}],
      'ports': [{'name': 'tfjob-port', 'containerPort': TFJOB_PORT}],
      'resources': {'requests': requests, 'limits': limits},
      # The worker writes its error there; a worker killed before it could falls back to
      # the end of its log.
      'terminationMessagePath': TERMINATION_LOG,
      'terminationMessagePolicy': 'FallbackToLogsOnError',
  }
  pod_spec: Dict[str, Any] = {'containers': [container]}
  if kubeflow.service_account:
    pod_spec['serviceAccountName'] = kubeflow.service_account
  return {
      'apiVersion': f'{TFJOB_GROUP}/{TFJOB_VERSION}',
      'kind': 'TFJob',
      'metadata': {'name': name, 'namespace': namespace, 'labels': labels},
      'spec': {
          'runPolicy': {
              'cleanPodPolicy': 'Running',  # stop leftover pods; keep finished ones' logs
              'backoffLimit': kubeflow.tfjob_backoff_limit,
              'activeDeadlineSeconds': kubeflow.tfjob_timeout_seconds,
              'ttlSecondsAfterFinished': TFJOB_TTL_SECONDS,
          },
          'successPolicy': 'AllWorkers',
          'tfReplicaSpecs': {
              'Worker': {
                  'replicas': config.training.workers,
                  'restartPolicy': 'ExitCode',
                  'template': {'metadata': {'labels': dict(labels)}, 'spec': pod_spec},
              },
          },
      },
  }


def tfjob_state(tfjob: Dict[str, Any]) -> Optional[str]:
  """'Succeeded' or 'Failed' once the TFJob finished, else None (still running)."""
  for condition in reversed((tfjob.get('status') or {}).get('conditions') or []):
    if condition.get('type') in ('Succeeded', 'Failed') and condition.get('status') == 'True':
      return condition['type']
  return None


def describe_tfjob_failure(tfjob: Dict[str, Any], pods: Sequence[Dict[str, Any]]) -> str:
  """One message: the TFJob's failure condition, then each failed pod's container error
  (termination message, else reason and exit code). Takes Kubernetes JSON (camelCase)."""
  meta = tfjob.get('metadata', {})
  conditions = (tfjob.get('status') or {}).get('conditions') or []
  failed = [c for c in conditions if c.get('type') == 'Failed']
  why = (failed[-1].get('message') or failed[-1].get('reason')) if failed else 'no reason given'
  lines = [f'TFJob {meta.get("namespace")}/{meta.get("name")} failed: {why}']
  for pod in sorted(pods, key=lambda p: int((p.get('metadata', {}).get('labels') or {}).get(
      REPLICA_INDEX_LABEL, 0))):
    pod_name = pod.get('metadata', {}).get('name')
    for status in (pod.get('status') or {}).get('containerStatuses') or []:
      if status.get('name') != TFJOB_CONTAINER:
        continue
      for when in ('state', 'lastState'):
        terminated = (status.get(when) or {}).get('terminated')
        if terminated and terminated.get('exitCode', 0) != 0:
          error = (terminated.get('message') or '').strip() or terminated.get('reason', '')
          lines.append(f'  pod {pod_name}: exit code {terminated.get("exitCode")}: {error}')
          break
  if len(lines) == 1:
    lines.append('  (no pod reported an error; see `kubectl describe tfjob` and the pod logs)')
  return '\n'.join(lines)


def own_namespace() -> str:
  """The namespace of the pod this runs in (where the TFJob goes by default)."""
  try:
    with open(_SERVICE_ACCOUNT_NAMESPACE) as f:
      return f.read().strip()
  except OSError:
    return 'default'


def submit_tfjob_and_wait(manifest: Dict[str, Any], timeout_seconds: float,
                          api_client=None, poll_seconds: float = 15.0) -> None:
  """Creates the TFJob (or finds the one this step created before) and waits until it
  succeeds; raises DistributedTrainingError with the pods' errors if it fails, or after
  `timeout_seconds`. `api_client`: a kubernetes ApiClient (default: in-cluster config)."""
  from kubernetes import client as k8s  # pylint: disable=g-import-not-at-top
  from kubernetes import config as k8s_config  # pylint: disable=g-import-not-at-top
  if api_client is None:
    k8s_config.load_incluster_config()
    api_client = k8s.ApiClient()
  custom = k8s.CustomObjectsApi(api_client)
  core = k8s.CoreV1Api(api_client)
  name, namespace = manifest['metadata']['name'], manifest['metadata']['namespace']
  where = f'TFJob {namespace}/{name}'

  def call(what, fn, *args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except k8s.ApiException as e:
      if e.status == 409 and what == 'create':
        return None
      raise DistributedTrainingError(f'cannot {what} {where}: HTTP {e.status} {e.reason}: '
                                     f'{_api_message(e)}') from None
    except Exception as e:  # pylint: disable=broad-except
      # Connection errors (urllib3) and the like: one line, naming the API server.
      raise DistributedTrainingError(
          f'cannot {what} {where}: the Kubernetes API at {api_client.configuration.host} '
          f'did not answer: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
      ) from None

  if call('create', custom.create_namespaced_custom_object, TFJOB_GROUP, TFJOB_VERSION,
          namespace, TFJOB_PLURAL, manifest) is None:
    logging.info('%s exists (this step was retried); waiting for it', where)
  else:
    logging.info('created %s with %d workers', where,
                 manifest['spec']['tfReplicaSpecs']['Worker']['replicas'])
  deadline = time.monotonic() + timeout_seconds
  while True:
    tfjob = call('read', custom.get_namespaced_custom_object, TFJOB_GROUP, TFJOB_VERSION,
                 namespace, TFJOB_PLURAL, name)
    state = tfjob_state(tfjob)
    if state == 'Succeeded':
      logging.info('%s succeeded', where)
      return
    if state == 'Failed':
      # As JSON, not the client's models (which reject pods with fields they do not know).
      pods = call('list the pods of', core.list_namespaced_pod, namespace,
                  label_selector=f'{JOB_NAME_LABEL}={name}', _preload_content=False)
      raise DistributedTrainingError(describe_tfjob_failure(
          tfjob, json.loads(pods.data).get('items', [])))
    if time.monotonic() > deadline:
      conditions = (tfjob.get('status') or {}).get('conditions') or [{}]
      raise DistributedTrainingError(
          f'{where} did not finish within {timeout_seconds:g} s '
          f'(kubeflow.tfjob_timeout_seconds); last condition: {conditions[-1].get("type")} '
          f'{conditions[-1].get("message", "")}'.strip())
    time.sleep(poll_seconds)


def example_tfjob_manifest() -> Dict[str, Any]:
  """The TFJob the Trainer step creates for the sample config (schemas/impressions.yaml) with
  `kubeflow.trainer: tfjob` and 2 workers, with artifact URIs as on a Kubeflow run: what
  deploy/tfjob-example.yaml shows."""
  from pipeline.config import load_config  # pylint: disable=g-import-not-at-top
  root = _project_root()
  config = load_config(os.path.join(root, 'schemas', 'impressions.yaml'), base_dir=root)
  config = config.with_overrides(
      data={'input_base': 'gs://CHANGE-ME/logs', 'schema': 'gs://CHANGE-ME/schema.pbtxt'},
      serving={'push_dir': 'gs://CHANGE-ME/serving'},
      training={'workers': 2},
      kubeflow={'trainer': 'tfjob', 'image': 'REGISTRY/mtl-pipeline:TAG',
                'pipeline_root': 'gs://CHANGE-ME/mtl-pipeline', 'namespace': 'kubeflow'})
  run = f'{config.kubeflow.pipeline_root}/RUN-ID'

  def artifact(cls, uri, **properties):
    a = cls()
    a.uri = uri
    for key, value in properties.items():
      setattr(a, key, value)
    return a

  inputs = {
      'examples': [artifact(standard_artifacts.Examples, f'{run}/Transform/transformed_examples',
                            split_names='["eval", "train"]')],
      'transform_graph': [artifact(standard_artifacts.TransformGraph,
                                   f'{run}/Transform/transform_graph')],
      'schema': [artifact(standard_artifacts.Schema, f'{run}/ImportSchemaGen/schema')],
  }
  outputs = {'model': [artifact(standard_artifacts.Model, f'{run}/Trainer/model')],
             'model_run': [artifact(standard_artifacts.ModelRun, f'{run}/Trainer/model_run')]}
  model_uri = outputs['model'][0].uri
  return tfjob_manifest(config, job_description(inputs, outputs, _trainer_properties(config)),
                        tfjob_name(config, model_uri), config.kubeflow.namespace)


def write_example_tfjob(path: str) -> None:
  """Writes example_tfjob_manifest() as YAML (deploy/tfjob-example.yaml)."""
  import yaml  # pylint: disable=g-import-not-at-top
  with open(path, 'w') as f:
    f.write('# The TFJob the Trainer step creates with `kubeflow.trainer: tfjob` (generated from\n'
            '# schemas/impressions.yaml with 2 workers by components.distributed_trainer.\n'
            '# write_example_tfjob; the artifact URIs are those of one Kubeflow run).\n')
    yaml.safe_dump(example_tfjob_manifest(), f, sort_keys=False, width=100)


def _api_message(error) -> str:
  try:
    return json.loads(error.body).get('message', '') or str(error.body)
  except (TypeError, ValueError):
    return str(error.body or '')


# ---------------------------------------------------------------------------------------------
# The component.


def in_kubernetes_pod() -> bool:
  return bool(os.environ.get('KUBERNETES_SERVICE_HOST'))


def check_model_written(serving_model_dir: str) -> None:
  if not fileio.exists(os.path.join(serving_model_dir, 'saved_model.pb')):
    raise DistributedTrainingError(
        f'the workers finished but the chief wrote no model to {serving_model_dir}')


class Executor(trainer_executor.GenericExecutor):
  """TFX's generic Trainer executor, run in-process, by local workers or by a TFJob."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    custom_config = json_utils.loads(
        exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY) or 'null') or {}
    config = PipelineConfig.from_json(custom_config[CONFIG_KEY])
    use_tfjob = config.kubeflow.trainer == 'tfjob' and in_kubernetes_pod()
    if config.training.workers == 1 and not use_tfjob:
      super().Do(input_dict, output_dict, exec_properties)
      return
    model_uri = artifact_utils.get_single_uri(output_dict[standard_component_specs.MODEL_KEY])
    job = job_description(input_dict, output_dict, exec_properties)
    if use_tfjob:
      namespace = config.kubeflow.namespace or own_namespace()
      manifest = tfjob_manifest(config, job, tfjob_name(config, model_uri), namespace)
      submit_tfjob_and_wait(manifest, config.kubeflow.tfjob_timeout_seconds)
    else:
      if config.kubeflow.trainer == 'tfjob':
        logging.info('kubeflow.trainer is tfjob, but this is not a Kubernetes pod: training '
                     'with %d local workers', config.training.workers)
      result = run_local_workers(job, config.training.workers, config.training)
      logging.info('%d training workers finished after %d start(s)', config.training.workers,
                   result.starts)
    check_model_written(path_utils.serving_model_dir(model_uri))


class DistributedTrainer(tfx.components.Trainer):
  """TFX's Trainer (same inputs, outputs and `run_fn`) training on `training.workers` workers:
  local processes, or a TFJob on Kubeflow (`kubeflow.trainer: tfjob`)."""

  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)


if __name__ == '__main__':
  main()
