"""The Trainer step's workers as a Kubernetes training job: the manifests, their submission and
the wait (docs/distributed.md, "Kubeflow").

Two kinds, one per Kubeflow generation (`kubeflow.trainer`):

- `trainjob`: a Kubeflow Trainer v2 `TrainJob` (trainer.kubeflow.org/v1alpha1) referencing a
  `ClusterTrainingRuntime` (`kubeflow.training_runtime`; the project ships
  `mtl-pipeline-tensorflow` in deploy/, `training_runtime_manifest`). Trainer v2 has no
  TensorFlow runtime: the shipped one uses the plainML policy (a JobSet of `numNodes` pods, one
  Indexed Job named `node`), and each pod derives its own `TF_CONFIG` from what the JobSet
  gives it (`trainer.cluster.jobset_tf_config`, run by `components.training_worker
  --cluster jobset`).
- `tfjob`: a Training Operator v1 `TFJob` (kubeflow.org/v1), which sets `TF_CONFIG` itself.

Both run `training.workers` pods of `kubeflow.image`, each the worker command of the local
launcher (TFX's Trainer executor on the step's artifacts); worker 0 is the chief. The step
creates the job (or finds the one it created before, when KFP retried it), waits for it and,
when it fails, reports each failed pod's error (its termination message, which the worker
writes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging

from components.training_worker import (EXIT_ERROR, TERMINATION_LOG, DistributedTrainingError,
                                        worker_command)
from pipeline.config import PipelineConfig
from trainer.cluster import JOBSET_ENV, TF_PORT

# TFJob (Kubeflow Training Operator v1.9, API kubeflow.org/v1).
TFJOB_GROUP = 'kubeflow.org'
TFJOB_VERSION = 'v1'
TFJOB_PLURAL = 'tfjobs'
TFJOB_CONTAINER = 'tensorflow'  # the operator finds the training container by this name
TFJOB_PORT = TF_PORT            # the operator's default TF port, named tfjob-port
JOB_NAME_LABEL = 'training.kubeflow.org/job-name'
REPLICA_INDEX_LABEL = 'training.kubeflow.org/replica-index'
TFJOB_TTL_SECONDS = 7 * 24 * 3600  # finished TFJobs (and their pods' logs) are kept a week

# TrainJob and ClusterTrainingRuntime (Kubeflow Trainer v2.3, API trainer.kubeflow.org/v1alpha1).
TRAINER_GROUP = 'trainer.kubeflow.org'
TRAINER_VERSION = 'v1alpha1'
TRAINJOB_PLURAL = 'trainjobs'
TRAINING_RUNTIME = 'mtl-pipeline-tensorflow'  # the ClusterTrainingRuntime in deploy/
# Trainer v2 applies a TrainJob's image, command, env and resources only to the container
# named `node` of the replicated job labelled as the `trainer` step (pkg/runtime/framework/
# plugins/jobset/builder.go); the JobSet (named as the TrainJob) labels every pod with it.
TRAINJOB_CONTAINER = 'node'
TRAINJOB_REPLICATED_JOB = 'node'
ANCESTOR_LABEL = 'trainer.kubeflow.org/trainjob-ancestor-step'
JOBSET_NAME_LABEL = 'jobset.sigs.k8s.io/jobset-name'
COMPLETION_INDEX_ANNOTATION = 'batch.kubernetes.io/job-completion-index'
# JobSet restarts the whole group (all pods recreated, resuming from the backup) at most this
# often before the TrainJob fails (the runtime's failurePolicy.maxRestarts).
RUNTIME_MAX_RESTARTS = 2

_SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace'
_LABELS = {'app.kubernetes.io/name': 'mtl-pipeline', 'app.kubernetes.io/component': 'trainer'}

# What to install when the API server does not know the kind (HTTP 404 on create).
_INSTALL = {
    'TFJob': 'the Kubeflow Training Operator v1 (kubectl apply --server-side -k '
             '"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?'
             'ref=v1.9.4"), or set kubeflow.trainer: trainjob on a cluster with Kubeflow '
             'Trainer v2',
    'TrainJob': 'Kubeflow Trainer v2 (kubectl apply --server-side -k "https://github.com/'
                'kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0", which brings '
                'JobSet) and the runtime in deploy/trainer-runtime.yaml, or set '
                'kubeflow.trainer: tfjob on a cluster with the Training Operator v1',
}


def job_name(config: PipelineConfig, model_uri: str, max_length: int = 59) -> str:
  """A DNS-1035 name, stable for one Trainer execution (from its model output's URI): when
  the step itself is retried, it finds and waits for the job it already created. A TrainJob's
  name must be shorter than a TFJob's: JobSet refuses a JobSet whose pod names
  (`<name>-node-0-<index>-<5 chars>`) exceed 63 characters."""
  digest = hashlib.sha256(model_uri.encode('utf-8')).hexdigest()[:10]
  room = max_length - len('-trainer-') - len(digest)
  base = re.sub(r'[^a-z0-9-]+', '-', config.name.lower()).strip('-')[:room].strip('-')
  if not base or not base[0].isalpha():
    base = ('mtl-' + base)[:room].strip('-')
  return f'{base}-trainer-{digest}'


def _resources(config: PipelineConfig) -> Dict[str, Dict[str, str]]:
  kubeflow = config.kubeflow
  requests = {'cpu': kubeflow.worker_cpu, 'memory': kubeflow.worker_memory}
  limits = dict(requests)
  if kubeflow.worker_gpus:
    limits['nvidia.com/gpu'] = str(kubeflow.worker_gpus)
  return {'requests': requests, 'limits': limits}


def _labels(config: PipelineConfig) -> Dict[str, str]:
  return dict(_LABELS, **{
      'mtl-pipeline/pipeline': re.sub(r'[^A-Za-z0-9_.-]', '-', config.name)[:63].strip('-_.')})


# ---------------------------------------------------------------------------------------------
# TFJob.


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
  labels = _labels(config)
  command = worker_command(job, TERMINATION_LOG)
  container = {
      'name': TFJOB_CONTAINER,
      'image': kubeflow.image,
      'command': command[:3],
      'args': command[3:],
      'env': [{'name': 'TF_USE_LEGACY_KERAS', 'value': '1'},
              {'name': 'PYTHONUNBUFFERED', 'value': '1'}],
      'ports': [{'name': 'tfjob-port', 'containerPort': TFJOB_PORT}],
      'resources': _resources(config),
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


# ---------------------------------------------------------------------------------------------
# TrainJob and the ClusterTrainingRuntime it references.


def training_runtime_manifest(image: str = 'REGISTRY/mtl-pipeline:TAG',
                              name: str = TRAINING_RUNTIME) -> Dict[str, Any]:
  """The ClusterTrainingRuntime TrainJobs of this project run on (deploy/trainer-runtime.yaml).

  plainML policy (no torch/mpi/jax section): Trainer v2 only sets the `node` job's
  parallelism and completions to the TrainJob's `numNodes` and applies its image, command,
  env and resources to the `node` container. Everything else a TensorFlow cluster needs is
  here:
  - the JobSet's DNS host names (`<jobset>-node-0-<index>.<jobset>`, resolvable before the
    pods are ready), from which each pod derives its TF_CONFIG: the JobSet's name and the
    job's name and index reach the container as environment variables (downward API on the
    labels JobSet sets on every pod); Kubernetes sets JOB_COMPLETION_INDEX (Indexed Job);
  - the group is restarted as a whole: a pod never restarts alone (`restartPolicy: Never`,
    `backoffLimit: 0`), a failed pod fails its Job, and JobSet recreates every pod (they
    resume from the backup), at most RUNTIME_MAX_RESTARTS times; but a worker's own error
    (exit code EXIT_ERROR: a bad config, a NaN loss, bad data) fails the Job through its pod
    failure policy, and that fails the JobSet at once, as the TFJob's ExitCode policy does.
  """
  env = [{'name': 'TF_USE_LEGACY_KERAS', 'value': '1'},
         {'name': 'PYTHONUNBUFFERED', 'value': '1'}]
  env += [{'name': variable,
           'valueFrom': {'fieldRef': {'fieldPath': f"metadata.labels['{label}']"}}}
          for variable, label in JOBSET_ENV.items()]
  container = {
      'name': TRAINJOB_CONTAINER,
      'image': image,
      'command': ['python', '-m', 'components.training_worker'],
      'env': env,
      'ports': [{'name': 'tf-port', 'containerPort': TF_PORT}],
      'terminationMessagePath': TERMINATION_LOG,
      'terminationMessagePolicy': 'FallbackToLogsOnError',
  }
  return {
      'apiVersion': f'{TRAINER_GROUP}/{TRAINER_VERSION}',
      'kind': 'ClusterTrainingRuntime',
      'metadata': {'name': name, 'labels': dict(
          _LABELS, **{'trainer.kubeflow.org/framework': 'tensorflow'})},
      'spec': {
          'mlPolicy': {'numNodes': 1},
          'template': {'spec': {
              'network': {'enableDNSHostnames': True, 'publishNotReadyAddresses': True},
              'failurePolicy': {
                  'maxRestarts': RUNTIME_MAX_RESTARTS,
                  'rules': [{'name': 'worker-error', 'action': 'FailJobSet',
                             'onJobFailureReasons': ['PodFailurePolicy']}],
              },
              'replicatedJobs': [{
                  'name': TRAINJOB_REPLICATED_JOB,
                  'template': {
                      'metadata': {'labels': {ANCESTOR_LABEL: 'trainer'}},
                      'spec': {
                          'completionMode': 'Indexed',
                          'backoffLimit': 0,
                          'podFailurePolicy': {'rules': [{
                              'action': 'FailJob',
                              'onExitCodes': {'containerName': TRAINJOB_CONTAINER,
                                              'operator': 'In', 'values': [EXIT_ERROR]},
                          }]},
                          'template': {'spec': {'restartPolicy': 'Never',
                                                'containers': [container]}},
                      },
                  },
              }],
          }},
      },
  }


def trainjob_manifest(config: PipelineConfig, job: Dict[str, Any], name: str,
                      namespace: str) -> Dict[str, Any]:
  """The TrainJob (trainer.kubeflow.org/v1alpha1) training with `training.workers` nodes of
  `kubeflow.image` on the runtime `kubeflow.training_runtime`: each node runs the worker
  command with `--cluster jobset` (it derives its TF_CONFIG), learns the node count from
  MTL_NUM_NODES, and gets the configured resources. `activeDeadlineSeconds` bounds the job."""
  kubeflow = config.kubeflow
  command = worker_command(job, TERMINATION_LOG, cluster='jobset')
  return {
      'apiVersion': f'{TRAINER_GROUP}/{TRAINER_VERSION}',
      'kind': 'TrainJob',
      'metadata': {'name': name, 'namespace': namespace, 'labels': _labels(config)},
      'spec': {
          'runtimeRef': {'name': kubeflow.training_runtime, 'kind': 'ClusterTrainingRuntime',
                         'apiGroup': TRAINER_GROUP},
          'activeDeadlineSeconds': kubeflow.trainjob_timeout_seconds,
          'trainer': {
              'image': kubeflow.image,
              'command': command[:3],
              'args': command[3:],
              'numNodes': config.training.workers,
              'env': [{'name': 'MTL_NUM_NODES', 'value': str(config.training.workers)}],
              'resourcesPerNode': _resources(config),
          },
      },
  }


# kubeflow.trainer -> the manifest of the job it creates, and the longest name that kind allows.
JOB_KINDS = {'tfjob': (tfjob_manifest, 59), 'trainjob': (trainjob_manifest, 44)}


def job_manifest(config: PipelineConfig, job: Dict[str, Any], model_uri: str,
                 namespace: str) -> Dict[str, Any]:
  """The TFJob or TrainJob (`kubeflow.trainer`) for one Trainer execution (`job_name`)."""
  make, max_name = JOB_KINDS[config.kubeflow.trainer]
  return make(config, job, job_name(config, model_uri, max_name), namespace)


# ---------------------------------------------------------------------------------------------
# State and failures, from the Kubernetes JSON (camelCase) of the job and its pods.


def finished_state(job: Dict[str, Any]) -> Optional[str]:
  """'Succeeded' or 'Failed' once a TFJob or TrainJob finished, else None (still running).
  A TFJob's conditions are Created/Running/Restarting/Succeeded/Failed; a TrainJob's
  Suspended/Complete/Failed (Complete copied from its JobSet's Completed)."""
  for condition in reversed((job.get('status') or {}).get('conditions') or []):
    if condition.get('status') != 'True':
      continue
    if condition.get('type') in ('Succeeded', 'Complete'):
      return 'Succeeded'
    if condition.get('type') == 'Failed':
      return 'Failed'
  return None


def trainjob_started(trainjob: Dict[str, Any]) -> bool:
  """Whether the TrainJob's node Job had all its pods ready (or finished) at least once: JobSet
  counts a replicated job `ready` when all its pods are. Until then it may be waiting for a
  runtime, quota, nodes or images."""
  for status in (trainjob.get('status') or {}).get('jobsStatus') or []:
    if status.get('name') == TRAINJOB_REPLICATED_JOB and any(
        status.get(key) for key in ('ready', 'succeeded', 'failed')):
      return True
  return False


def _pod_index(pod: Dict[str, Any]) -> int:
  meta = pod.get('metadata') or {}
  for where, key in (('labels', REPLICA_INDEX_LABEL), ('annotations', COMPLETION_INDEX_ANNOTATION),
                     ('labels', COMPLETION_INDEX_ANNOTATION)):
    value = (meta.get(where) or {}).get(key)
    if value is not None:
      return int(value)
  return 0


def describe_failure(job: Dict[str, Any], pods: Sequence[Dict[str, Any]],
                     container: str) -> str:
  """One message: the job's failure condition, then each failed pod's `container` error
  (termination message, else reason and exit code)."""
  meta = job.get('metadata', {})
  conditions = (job.get('status') or {}).get('conditions') or []
  failed = [c for c in conditions if c.get('type') == 'Failed']
  why = (failed[-1].get('message') or failed[-1].get('reason')) if failed else 'no reason given'
  kind = job.get('kind', 'TFJob')
  lines = [f'{kind} {meta.get("namespace")}/{meta.get("name")} failed: {why}']
  for pod in sorted(pods, key=_pod_index):
    pod_name = pod.get('metadata', {}).get('name')
    for status in (pod.get('status') or {}).get('containerStatuses') or []:
      if status.get('name') != container:
        continue
      for when in ('state', 'lastState'):
        terminated = (status.get(when) or {}).get('terminated')
        if terminated and terminated.get('exitCode', 0) != 0:
          error = (terminated.get('message') or '').strip() or terminated.get('reason', '')
          lines.append(f'  pod {pod_name}: exit code {terminated.get("exitCode")}: {error}')
          break
  if len(lines) == 1:
    lines.append(f'  (no pod reported an error; see `kubectl describe {kind.lower()}` and the '
                 'pod logs)')
  return '\n'.join(lines)


def describe_tfjob_failure(tfjob: Dict[str, Any], pods: Sequence[Dict[str, Any]]) -> str:
  return describe_failure(dict(tfjob, kind='TFJob'), pods, TFJOB_CONTAINER)


def _conditions(job: Dict[str, Any]) -> str:
  conditions = (job.get('status') or {}).get('conditions') or []
  if not conditions:
    return 'no conditions'
  return '; '.join(f'{c.get("type")}={c.get("status")}'
                   + (f' ({c.get("reason")}: {c.get("message")})' if c.get('reason') or
                      c.get('message') else '') for c in conditions)


# ---------------------------------------------------------------------------------------------
# Submission and the wait.


@dataclasses.dataclass(frozen=True)
class JobKind:
  """What differs between a TFJob and a TrainJob for the step that submits and waits."""
  kind: str
  group: str
  version: str
  plural: str
  container: str            # the training container in each pod
  pod_selector: str         # label selecting the job's pods, `=<name>` appended
  timeout_key: str          # the config key bounding the whole job
  start_timeout_key: Optional[str] = None  # bounding the wait for every pod to be ready
  started: Optional[Callable[[Dict[str, Any]], bool]] = None


TFJOB = JobKind('TFJob', TFJOB_GROUP, TFJOB_VERSION, TFJOB_PLURAL, TFJOB_CONTAINER,
                JOB_NAME_LABEL, 'kubeflow.tfjob_timeout_seconds')
TRAINJOB = JobKind('TrainJob', TRAINER_GROUP, TRAINER_VERSION, TRAINJOB_PLURAL,
                   TRAINJOB_CONTAINER, JOBSET_NAME_LABEL, 'kubeflow.trainjob_timeout_seconds',
                   'kubeflow.trainjob_start_timeout_seconds', trainjob_started)
KINDS = {k.kind: k for k in (TFJOB, TRAINJOB)}


def own_namespace() -> str:
  """The namespace of the pod this runs in (where the job goes by default)."""
  try:
    with open(_SERVICE_ACCOUNT_NAMESPACE) as f:
      return f.read().strip()
  except OSError:
    return 'default'


def in_kubernetes_pod() -> bool:
  return bool(os.environ.get('KUBERNETES_SERVICE_HOST'))


def submit_and_wait(manifest: Dict[str, Any], timeout_seconds: float,
                    start_timeout_seconds: Optional[float] = None, api_client=None,
                    poll_seconds: float = 15.0) -> None:
  """Creates the TFJob or TrainJob (or finds the one this step created before) and waits until
  it succeeds. Raises DistributedTrainingError: with the pods' errors if it fails; with its
  conditions if it did not start within `start_timeout_seconds` (TrainJob) or finish within
  `timeout_seconds`; naming what to install if the API server does not know the kind (404),
  and the verb and resource if the step's service account may not (403).
  `api_client`: a kubernetes ApiClient (default: the file KUBECONFIG names when set, else the
  pod's in-cluster config)."""
  from kubernetes import client as k8s  # pylint: disable=g-import-not-at-top
  from kubernetes import config as k8s_config  # pylint: disable=g-import-not-at-top
  kind = KINDS[manifest['kind']]
  if api_client is None:
    if os.environ.get('KUBECONFIG'):
      # Named explicitly: the client reads KUBECONFIG once, when it is imported.
      k8s_config.load_kube_config(config_file=os.environ['KUBECONFIG'])
    else:
      k8s_config.load_incluster_config()
    api_client = k8s.ApiClient()
  custom = k8s.CustomObjectsApi(api_client)
  core = k8s.CoreV1Api(api_client)
  name, namespace = manifest['metadata']['name'], manifest['metadata']['namespace']
  where = f'{kind.kind} {namespace}/{name}'
  resource = f'{kind.plural}.{kind.group}'

  def call(what, verb, resource_name, fn, *args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except k8s.ApiException as e:
      if e.status == 409 and verb == 'create':
        return None
      message = _api_message(e)
      if e.status == 404 and resource_name == resource and (
          verb == 'create' or 'the server could not find the requested resource' in message):
        raise DistributedTrainingError(
            f'cannot {what} {where}: this cluster has no {kind.kind} resource '
            f'({kind.group}/{kind.version} {kind.plural}, HTTP 404: {message}); install '
            f'{_INSTALL[kind.kind]}') from None
      if e.status == 403:
        raise DistributedTrainingError(
            f'cannot {what} {where}: the step\'s service account may not {verb} '
            f'{resource_name} in namespace {namespace} (HTTP 403: {message}); grant it with a '
            f'Role like deploy/training-rbac.yaml') from None
      raise DistributedTrainingError(f'cannot {what} {where}: HTTP {e.status} {e.reason}: '
                                     f'{message}') from None
    except Exception as e:  # pylint: disable=broad-except
      # Connection errors (urllib3) and the like: one line, naming the API server.
      raise DistributedTrainingError(
          f'cannot {what} {where}: the Kubernetes API at {api_client.configuration.host} '
          f'did not answer: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
      ) from None

  if call('create', 'create', resource, custom.create_namespaced_custom_object, kind.group,
          kind.version, namespace, kind.plural, manifest) is None:
    logging.info('%s exists (this step was retried); waiting for it', where)
  else:
    logging.info('created %s with %d workers', where, _replicas(manifest))
  started_at = time.monotonic()
  deadline = started_at + timeout_seconds
  started = kind.started is None
  wait = min(1.0, poll_seconds)
  while True:
    job = call('read', 'get', resource, custom.get_namespaced_custom_object, kind.group,
               kind.version, namespace, kind.plural, name)
    job.setdefault('kind', kind.kind)
    state = finished_state(job)
    if state == 'Succeeded':
      logging.info('%s succeeded', where)
      return
    if state == 'Failed':
      # As JSON, not the client's models (which reject pods with fields they do not know).
      pods = call('list the pods of', 'list', 'pods', core.list_namespaced_pod, namespace,
                  label_selector=f'{kind.pod_selector}={name}', _preload_content=False)
      raise DistributedTrainingError(describe_failure(
          job, json.loads(pods.data).get('items', []), kind.container))
    if not started and kind.started(job):
      started = True
      logging.info('%s: every node is running (after %.0f s)', where,
                   time.monotonic() - started_at)
    now = time.monotonic()
    if not started and start_timeout_seconds is not None and (
        now - started_at > start_timeout_seconds):
      raise DistributedTrainingError(
          f'{where} did not start within {start_timeout_seconds:g} s '
          f'({kind.start_timeout_key}): not every node was ever ready (a missing runtime, '
          f'quota, no node with the requested resources, an image that cannot be pulled?); '
          f'its conditions: {_conditions(job)}; its jobs: '
          f'{json.dumps((job.get("status") or {}).get("jobsStatus") or [])}'
          f'{_warning_events(core, namespace, name)}')
    if now > deadline:
      raise DistributedTrainingError(
          f'{where} did not finish within {timeout_seconds:g} s ({kind.timeout_key}); '
          f'its conditions: {_conditions(job)}')
    # From 1 s up to poll_seconds: a short job is not kept waiting for a long poll.
    time.sleep(wait)
    wait = min(wait * 1.5, poll_seconds)


def _replicas(manifest: Dict[str, Any]) -> int:
  spec = manifest['spec']
  if 'tfReplicaSpecs' in spec:
    return spec['tfReplicaSpecs']['Worker']['replicas']
  return spec['trainer']['numNodes']


def _warning_events(core, namespace: str, name: str) -> str:
  """The job's latest Warning events (where Trainer v2 reports a runtime it cannot find), or
  nothing if they cannot be read."""
  try:
    events = json.loads(core.list_namespaced_event(
        namespace, field_selector=f'involvedObject.name={name}',
        _preload_content=False).data).get('items', [])
  except Exception:  # pylint: disable=broad-except
    return ''
  warnings = [f'{e.get("reason")}: {e.get("message")}' for e in events
              if e.get('type') == 'Warning'][-3:]
  return '; its warning events: ' + ' | '.join(warnings) if warnings else ''


def _api_message(error) -> str:
  try:
    return json.loads(error.body).get('message', '') or str(error.body)
  except (TypeError, ValueError):
    return str(error.body or '')
