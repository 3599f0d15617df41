"""A Kubernetes cluster with Kubeflow Trainer v2 and JobSet, as far as the Trainer step sees it,
with each TrainJob node running for real as a process in a network namespace of its own.

No Kubernetes exists on this machine, so this is a stand-in at the Kubernetes API. It answers
the calls `components.kubernetes_training.submit_and_wait` makes, over HTTP as the API server
does, and runs a TrainJob the way Trainer v2.3.0 + JobSet v0.12.0 would. Each rule names its
source (kubeflow/trainer at v2.3.0, kubernetes-sigs/jobset at v0.12.0, Kubernetes docs):

- create (POST .../trainjobs): checked against the official CRD schema (tests/data/
  kubeflow_crds; a type or required-field error is HTTP 422 Invalid; unknown fields are pruned
  as with the API server's default fieldValidation=Warn); the runtime must exist (Trainer's
  validating webhook, pkg/runtime/core/clustertrainingruntime.go ValidateObjects: "specified
  clusterTrainingRuntime must be created before the TrainJob is created", HTTP 422); an
  existing name is 409 AlreadyExists. With `installed=False` the API server has no such
  resource (404 NotFound); with `forbidden` the caller's RBAC refuses the verb (403).
- the JobSet (plugins/jobset/jobset.go): named as the TrainJob; the runtime's replicated job
  `node` with parallelism = completions = `trainer.numNodes` (plugins/plainml/plainml.go,
  SyncParallelCount); the TrainJob's image, command, args and env applied to the container
  named `node` (builder.go: env upserted over the runtime's). Each pod i gets the labels JobSet
  sets (jobset_controller.go: jobset-name, replicatedjob-name, job-index, ...), the Indexed
  Job's JOB_COMPLETION_INDEX and completion-index annotation (Kubernetes Indexed Job), the
  runtime env resolved (downward API `metadata.labels['...']`), and the DNS name
  `<jobset>-node-0-<i>.<jobset>` (jobset.go endpoints; subdomain = JobSet name with
  enableDNSHostnames, resolvable before ready: publishNotReadyAddresses).
- here, a pod is the container's command run in its own network namespace (its own loopback
  and one address on a bridge, as a pod has its own IP), whose /etc/hosts maps every pod's DNS
  name to its address (the headless Service's records), and in its own mount namespace with
  its own file at the container's terminationMessagePath (kubelet mounts one per container).
  The image's environment is this test's (its Python and the project on PYTHONPATH).
- status: jobsStatus[node] counts the Job as ready once all its pods run (JobSet
  ReplicatedJobStatus); `Complete` (reason AllJobsCompleted) when every pod exited 0; a pod
  failing with an exit code the runtime's podFailurePolicy lists fails the Job (reason
  PodFailurePolicy) and the JobSet at once (failurePolicy rule FailJobSet: reason
  FailJobSetFailurePolicyAction); any other failure recreates every pod (RestartJobSet) up to
  failurePolicy.maxRestarts, then `Failed` (ReachedMaxRestarts). Trainer copies the JobSet's
  Completed/Failed to the TrainJob as Complete/Failed (jobset.go). With `schedulable=False`
  no pod is ever created (quota, no node): the Job stays active, never ready.
- pods (GET /api/v1/namespaces/<ns>/pods?labelSelector=jobset.sigs.k8s.io/jobset-name=<name>):
  each pod's `node` container status; a terminated container's message is its termination
  file, or with FallbackToLogsOnError and an empty file the end of its log (kubelet: the last
  80 lines, at most 2048 bytes).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional

from crd_schema import crd_errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SUBNET = '10.231.{net}.{host}'


def _run(*command: str) -> None:
  subprocess.run(command, check=True, capture_output=True, text=True)


def network_namespaces_available() -> Optional[str]:
  """None if this process can create network namespaces (root, iproute2), else why not."""
  if os.geteuid() != 0:
    return 'network namespaces need root'
  if not shutil.which('ip'):
    return 'iproute2 (ip) is not installed'
  return None


class _PodNetwork:
  """One bridge and, per pod, a network namespace with a veth on it and an address."""

  def __init__(self, tag: str, hostnames: List[str], net: int):
    self.tag = tag
    self.bridge = f'{tag}br'
    self.namespaces = [f'{tag}p{i}' for i in range(len(hostnames))]
    self.addresses = [_SUBNET.format(net=net, host=i + 1) for i in range(len(hostnames))]
    hosts = '127.0.0.1 localhost\n' + ''.join(
        f'{address} {name}\n' for address, name in zip(self.addresses, hostnames))
    _run('ip', 'link', 'add', self.bridge, 'type', 'bridge')
    _run('ip', 'addr', 'add', _SUBNET.format(net=net, host=254) + '/24', 'dev', self.bridge)
    _run('ip', 'link', 'set', self.bridge, 'up')
    for i, (namespace, address) in enumerate(zip(self.namespaces, self.addresses)):
      _run('ip', 'netns', 'add', namespace)
      _run('ip', 'link', 'add', f'{tag}v{i}', 'type', 'veth', 'peer', 'name', 'eth0', 'netns',
           namespace)
      _run('ip', 'link', 'set', f'{tag}v{i}', 'master', self.bridge)
      _run('ip', 'link', 'set', f'{tag}v{i}', 'up')
      _run('ip', '-n', namespace, 'addr', 'add', f'{address}/24', 'dev', 'eth0')
      _run('ip', '-n', namespace, 'link', 'set', 'eth0', 'up')
      _run('ip', '-n', namespace, 'link', 'set', 'lo', 'up')
      # `ip netns exec` bind-mounts /etc/netns/<namespace>/* over /etc/* in the process.
      os.makedirs(f'/etc/netns/{namespace}', exist_ok=True)
      with open(f'/etc/netns/{namespace}/hosts', 'w') as f:
        f.write(hosts)

  def close(self) -> None:
    for i, namespace in enumerate(self.namespaces):
      subprocess.run(['ip', 'netns', 'del', namespace], capture_output=True)
      subprocess.run(['ip', 'link', 'del', f'{self.tag}v{i}'], capture_output=True)
      shutil.rmtree(f'/etc/netns/{namespace}', ignore_errors=True)
    subprocess.run(['ip', 'link', 'del', self.bridge], capture_output=True)


# Run in the pod's network namespace: give the container its own termination file at the path
# it names, then exec its command.
_POD_SHELL = ('[ -e "$1" ] || : > "$1"; mount --bind "$2" "$1" || exit 125; '
              'shift 2; exec "$@"')


class _Pod:

  def __init__(self, name: str, index: int, labels: Dict[str, str], container: Dict[str, Any],
               env: Dict[str, str], namespace: str, scratch: str):
    self.name, self.index, self.labels = name, index, labels
    self.termination_path = container.get('terminationMessagePath', '/dev/termination-log')
    self.fallback_to_logs = container.get('terminationMessagePolicy') == 'FallbackToLogsOnError'
    self.termination_file = os.path.join(scratch, f'{name}.termination')
    self.log_file = os.path.join(scratch, f'{name}.log')
    open(self.termination_file, 'w').close()
    command = list(container.get('command') or []) + list(container.get('args') or [])
    with open(self.log_file, 'wb') as log:
      self.process = subprocess.Popen(
          ['ip', 'netns', 'exec', namespace, 'sh', '-c', _POD_SHELL, 'pod',
           self.termination_path, self.termination_file] + command,
          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

  def stop(self) -> None:
    if self.process.poll() is None:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()

  def status(self) -> Dict[str, Any]:
    code = self.process.poll()
    if code is not None and code < 0:
      code = 128 - code  # a container killed by signal N exits with 128 + N
    if code is None:
      state = {'running': {'startedAt': '2026-01-01T00:00:00Z'}}
    else:
      with open(self.termination_file, errors='replace') as f:
        message = f.read()
      if not message.strip() and code != 0 and self.fallback_to_logs:
        with open(self.log_file, 'rb') as f:
          lines = f.read().decode('utf-8', 'replace').splitlines()[-80:]
        message = '\n'.join(lines)[-2048:]
      state = {'terminated': {'exitCode': code, 'reason': 'Completed' if code == 0 else 'Error',
                              'message': message}}
    return {
        'metadata': {'name': self.name, 'labels': self.labels,
                     'annotations': {'batch.kubernetes.io/job-completion-index': str(self.index)}},
        'status': {'phase': 'Running' if code is None else
                   ('Succeeded' if code == 0 else 'Failed'),
                   'containerStatuses': [{'name': 'node', 'state': state}]},
    }


class TrainJobRun:
  """One TrainJob's JobSet: its pods, restarts and status."""

  def __init__(self, cluster: 'TrainerV2Cluster', trainjob: Dict[str, Any],
               runtime: Dict[str, Any]):
    self.cluster, self.trainjob, self.runtime = cluster, trainjob, runtime
    self.name = trainjob['metadata']['name']
    jobset = runtime['spec']['template']['spec']
    self.replicated_job = next(
        r for r in jobset['replicatedJobs']
        if r['template'].get('metadata', {}).get('labels', {}).get(
            'trainer.kubeflow.org/trainjob-ancestor-step') == 'trainer')
    self.max_restarts = (jobset.get('failurePolicy') or {}).get('maxRestarts', 0)
    self.fail_at_once_codes = set()
    for rule in (self.replicated_job['template']['spec'].get('podFailurePolicy') or {}).get(
        'rules', []):
      codes = rule.get('onExitCodes') or {}
      if rule.get('action') == 'FailJob' and codes.get('operator') == 'In':
        self.fail_at_once_codes |= set(codes.get('values', []))
    self.nodes = trainjob['spec']['trainer'].get('numNodes') or runtime['spec'].get(
        'mlPolicy', {}).get('numNodes', 1)
    self.hostnames = [f'{self.name}-{self.replicated_job["name"]}-0-{i}.{self.name}'
                      for i in range(self.nodes)]
    self.restarts = 0
    self.pods: List[_Pod] = []
    self.condition: Optional[Dict[str, str]] = None
    self.network: Optional[_PodNetwork] = None
    self.scratch = tempfile.mkdtemp(prefix='trainjob-')
    self._lock = threading.Lock()
    if cluster.schedulable:
      self.network = _PodNetwork(cluster.next_tag(), self.hostnames, cluster.next_net())
      self._start_pods()
      threading.Thread(target=self._watch, daemon=True).start()

  def _container(self) -> Dict[str, Any]:
    pod_spec = self.replicated_job['template']['spec']['template']['spec']
    container = dict(next(c for c in pod_spec['containers'] if c['name'] == 'node'))
    trainer = self.trainjob['spec']['trainer']
    for key in ('image', 'command', 'args'):
      if trainer.get(key) is not None:
        container[key] = trainer[key]
    env = {e['name']: e for e in container.get('env', [])}
    for e in trainer.get('env') or []:
      env[e['name']] = e
    container['env'] = list(env.values())
    return container

  def _start_pods(self) -> None:
    container = self._container()
    self.pods = []
    for i in range(self.nodes):
      labels = {'jobset.sigs.k8s.io/jobset-name': self.name,
                'jobset.sigs.k8s.io/replicatedjob-name': self.replicated_job['name'],
                'jobset.sigs.k8s.io/replicatedjob-replicas': '1',
                'jobset.sigs.k8s.io/job-index': '0',
                'jobset.sigs.k8s.io/job-global-index': '0',
                'batch.kubernetes.io/job-completion-index': str(i)}
      env = dict(self.cluster.image_env, JOB_COMPLETION_INDEX=str(i))
      for variable in container['env']:
        if 'value' in variable:
          env[variable['name']] = variable['value']
        else:
          path = variable['valueFrom']['fieldRef']['fieldPath']
          assert path.startswith("metadata.labels['") and path.endswith("']"), path
          env[variable['name']] = labels.get(path[len("metadata.labels['"):-2], '')
      name = f'{self.name}-{self.replicated_job["name"]}-0-{i}-r{self.restarts}'
      self.pods.append(_Pod(name, i, labels, container, env, self.network.namespaces[i],
                            self.scratch))

  def _watch(self) -> None:
    while self.condition is None:
      time.sleep(0.2)
      codes = [p.process.poll() for p in self.pods]
      with self._lock:
        failed = [(p, c) for p, c in zip(self.pods, codes) if c not in (None, 0)]
        if failed:
          pod, code = failed[0]
          if code in self.fail_at_once_codes:
            self._finish('Failed', 'FailJobSetFailurePolicyAction',
                         f'jobset {self.name} failed due to failure policy action '
                         f'(job {self.name}-node-0 failed: PodFailurePolicy: container node '
                         f'for pod {pod.name} failed with exit code {code})')
          elif self.restarts >= self.max_restarts:
            self._finish('Failed', 'ReachedMaxRestarts', 'jobset failed due to reaching max '
                         'number of restarts')
          else:
            for p in self.pods:
              p.stop()
            self.restarts += 1
            self._start_pods()
        elif all(c == 0 for c in codes):
          self._finish('Complete', 'AllJobsCompleted', 'jobset completed successfully')

  def _finish(self, kind: str, reason: str, message: str) -> None:
    for pod in self.pods:
      pod.stop()
    self.condition = {'type': kind, 'status': 'True', 'reason': reason, 'message': message}
    if self.network:
      self.network.close()

  def stop(self) -> None:
    with self._lock:
      if self.condition is None:
        self._finish('Failed', 'Deleted', 'deleted')

  def status(self) -> Dict[str, Any]:
    with self._lock:
      running = bool(self.pods) and all(p.process.poll() is None for p in self.pods)
      done = self.condition is not None
      jobs = {'name': self.replicated_job['name'], 'active': 0 if done else 1,
              'ready': 1 if running and not done else 0,
              'succeeded': 1 if done and self.condition['type'] == 'Complete' else 0,
              'failed': 1 if done and self.condition['type'] == 'Failed' else 0,
              'suspended': 0}
      return {'conditions': [self.condition] if done else [], 'jobsStatus': [jobs]}


class TrainerV2Cluster:
  """The stand-in: an HTTP server in a thread, and the TrainJobs it runs."""

  def __init__(self, runtimes: List[Dict[str, Any]], image_env: Dict[str, str],
               installed: bool = True, schedulable: bool = True,
               forbidden: Optional[str] = None):
    self.runtimes = {r['metadata']['name']: r for r in runtimes}
    self.image_env = image_env
    self.installed, self.schedulable, self.forbidden = installed, schedulable, forbidden
    self.trainjobs: Dict[str, TrainJobRun] = {}
    self.requests: List[str] = []
    self._tags = 0
    cluster = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def _send(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        self._send(*cluster.create(self.path, body))

      def do_GET(self):  # noqa: N802
        self._send(*cluster.get(self.path))

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.host = f'http://127.0.0.1:{self.server.server_port}'

  def next_tag(self) -> str:
    self._tags += 1
    return f'mtk{os.getpid() % 10000}{self._tags}'

  def next_net(self) -> int:
    return 100 + (os.getpid() + self._tags) % 100

  def kubeconfig(self, path: str) -> str:
    with open(path, 'w') as f:
      json.dump({'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'standin',
                 'clusters': [{'name': 'standin', 'cluster': {'server': self.host}}],
                 'users': [{'name': 'standin', 'user': {'token': 'standin'}}],
                 'contexts': [{'name': 'standin',
                               'context': {'cluster': 'standin', 'user': 'standin'}}]}, f)
    return path

  @staticmethod
  def _status(code: int, reason: str, message: str) -> Dict[str, Any]:
    return {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'message': message,
            'reason': reason, 'code': code}

  def _refused(self, verb: str, resource: str, namespace: str):
    if not self.installed and resource == 'trainjobs':
      return 404, self._status(404, 'NotFound', 'the server could not find the requested '
                               'resource')
    if self.forbidden == verb:
      group = 'trainer.kubeflow.org' if resource == 'trainjobs' else ''
      return 403, self._status(403, 'Forbidden', (
          f'{resource}.{group} is forbidden: User "system:serviceaccount:{namespace}:'
          f'pipeline-runner" cannot {verb} resource "{resource}" in API group "{group}" in '
          f'the namespace "{namespace}"').replace(f'{resource}. is', f'{resource} is'))
    return None

  def create(self, path: str, body: Dict[str, Any]):
    self.requests.append(f'POST {path}')
    parts = path.strip('/').split('/')
    if parts[:3] != ['apis', 'trainer.kubeflow.org', 'v1alpha1'] or parts[-1] != 'trainjobs':
      return 404, self._status(404, 'NotFound', f'no route {path}')
    namespace = parts[4]
    refused = self._refused('create', 'trainjobs', namespace)
    if refused:
      return refused
    name = body.get('metadata', {}).get('name', '')
    errors = crd_errors(body, strict=False)
    if errors:
      return 422, self._status(422, 'Invalid', f'TrainJob.trainer.kubeflow.org "{name}" is '
                               f'invalid: {"; ".join(errors)}')
    runtime = self.runtimes.get(body['spec']['runtimeRef']['name'])
    if runtime is None:
      return 422, self._status(422, 'Invalid', (
          f'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
          f'spec.RuntimeRef: Invalid value: "{body["spec"]["runtimeRef"]["name"]}": '
          f'ClusterTrainingRuntime.trainer.kubeflow.org "{body["spec"]["runtimeRef"]["name"]}" '
          'not found: specified clusterTrainingRuntime must be created before the TrainJob is '
          'created'))
    if name in self.trainjobs:
      return 409, self._status(409, 'AlreadyExists',
                               f'trainjobs.trainer.kubeflow.org "{name}" already exists')
    self.trainjobs[name] = TrainJobRun(self, body, runtime)
    return 201, body

  def get(self, path: str):
    self.requests.append(f'GET {path}')
    url = urllib.parse.urlparse(path)
    parts = url.path.strip('/').split('/')
    if parts[:3] == ['apis', 'trainer.kubeflow.org', 'v1alpha1'] and parts[5:6] == ['trainjobs']:
      refused = self._refused('get', 'trainjobs', parts[4])
      if refused:
        return refused
      run = self.trainjobs.get(parts[6] if len(parts) > 6 else '')
      if run is None:
        return 404, self._status(404, 'NotFound', f'trainjobs.trainer.kubeflow.org '
                                 f'"{parts[-1]}" not found')
      return 200, dict(run.trainjob, status=run.status())
    if parts[:2] == ['api', 'v1'] and parts[4:5] == ['pods']:
      refused = self._refused('list', 'pods', parts[3])
      if refused:
        return refused
      selector = urllib.parse.parse_qs(url.query).get('labelSelector', [''])[0]
      key, _, value = selector.partition('=')
      items = [pod.status() for run in self.trainjobs.values() for pod in run.pods
               if pod.labels.get(key) == value]
      return 200, {'kind': 'PodList', 'apiVersion': 'v1', 'items': items}
    if parts[:2] == ['api', 'v1'] and parts[4:5] == ['events']:
      return 200, {'kind': 'EventList', 'apiVersion': 'v1', 'items': []}
    return 404, self._status(404, 'NotFound', f'no route {path}')

  def close(self) -> None:
    for run in self.trainjobs.values():
      run.stop()
      shutil.rmtree(run.scratch, ignore_errors=True)
    self.server.shutdown()


def image_env() -> Dict[str, str]:
  """The environment the pipeline image gives its containers (deploy/Dockerfile: the project
  installed, its Python first on PATH), made of this test's Python and checkout."""
  return {'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
          'PYTHONPATH': REPO, 'HOME': os.environ.get('HOME', '/root'),
          'PYTHONHASHSEED': '0', 'TF_CPP_MIN_LOG_LEVEL': '2'}
