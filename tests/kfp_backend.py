"""Executes a compiled pipeline spec the way the Kubeflow Pipelines v2 backend does.

No cluster exists here, so this stands in for the KFP v2 driver and launcher (open-source
backend, `mode='oss'`) or for Vertex AI Pipelines (`mode='vertex'`). It reproduces only
what the backend does with a task, each rule citing where it comes from (files of the
`kubeflow/pipelines` repository, master as of KFP 2.5 to 2.17). Everything a task runs is the
real thing: the container's `command` + `args` with placeholders filled by kfp's own
`kfp.local.placeholder_utils`, in a child process of this project's Python (standing in for
the image).

What stands in for what:
- object storage (`minio://bucket/key`): a directory, `<workdir>/object-store/minio/bucket/key`;
- a pod: a fresh directory per task; `/tmp` and the launcher's local paths (`/minio/…`,
  `/s3/…`) are under it, and the entrypoint is told so with `LAUNCHER_MOUNT_ROOT`; the
  directory is removed when the task ends, so only what the launcher uploads survives;
- ML Metadata: a dict of artifacts (id, URI, custom properties as MLMD stores them) and a
  dict of cache entries.
Paths a step opens itself (the logs, the push directory, the state directory) are shared
local directories, as a volume mounted in every pod (or a gs:// bucket) would be.

For speed, a task's process is forked from a server that has imported the step modules once
(`multiprocessing` forkserver); the child then runs the command's module as `python -m` does
(`runpy`, fresh `sys.argv`, the task's environment, working directory and log file). With
`fork=False` each task is a plain `subprocess` of `sys.executable`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from google.protobuf import json_format
from kfp.local import executor_input_utils
from kfp.local import placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

MOUNT_ROOT_ENV = 'LAUNCHER_MOUNT_ROOT'  # pipeline/kubeflow/entrypoint.py
# backend/src/v2/component/launcher_v2.go, LocalPathForURI (gs:// is mounted at /gcs/ too,
# but nothing here is gs://).
MOUNTED = {'minio://': 'minio', 's3://': 's3', 'gs://': 'gcs'}
# backend/src/v2/component/launcher_v2.go: OutputMetadataFilepath.
OUTPUT_METADATA_FILE = '/tmp/kfp_outputs/output_metadata.json'
LOGS_OUTPUT = 'executor-logs'


class TaskFailed(RuntimeError):
  """A task's command exited non-zero; carries its exit code (negative: the signal that ended
  it) and the end of its log."""

  def __init__(self, task: str, log: str, code: Optional[int] = None):
    tail = '\n'.join(log.strip().splitlines()[-40:])
    super().__init__(f'task {task} failed (exit code {code}):\n{tail}')
    self.task = task
    self.log = log


@dataclasses.dataclass
class TaskRun:
  name: str
  state: str                       # 'RUN' or 'CACHED'
  outputs: Dict[str, int]          # output key -> artifact id
  executor_input: Dict[str, Any]   # what `{{$}}` was (None when cached)
  log: str = ''
  hook_ran: bool = False
  seconds: float = 0.0


@dataclasses.dataclass
class PipelineRun:
  run_id: str
  tasks: Dict[str, TaskRun]
  backend: 'Backend'

  def artifact(self, task: str, key: str) -> Dict[str, Any]:
    return self.backend.artifacts[self.tasks[task].outputs[key]]


def _local_path(uri: str, pod: str) -> str:
  """launcher_v2.go LocalPathForURI, under the pod's directory ('' if not mounted)."""
  for prefix, directory in MOUNTED.items():
    if uri.startswith(prefix):
      return os.path.join(pod, directory, uri[len(prefix):])
  return ''


def _copy(src: str, dst: str) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.isdir(src):
    shutil.copytree(src, dst, dirs_exist_ok=True)
  else:
    shutil.copy2(src, dst)


def _mlmd_value(value: Any) -> Dict[str, Any]:
  """backend/src/v2/metadata/converter.go StructValueToMLMDValue: how the launcher records an
  executor output's metadata field as an MLMD custom property. Bools become ints; lists and
  structs are wrapped in a struct under "list" / "struct"."""
  if isinstance(value, bool):
    return {'int': int(value)}
  if isinstance(value, str):
    return {'string': value}
  if isinstance(value, (int, float)):
    return {'double': float(value)}
  if isinstance(value, list):
    return {'struct': {'list': value}}
  if isinstance(value, dict):
    return {'struct': {'struct': value}}
  raise ValueError(f'unknown/unsupported value type {type(value).__name__}')


def _metadata_value(value: Dict[str, Any]) -> Any:
  """converter.go toRuntimeArtifact: MLMD values back to executor input metadata (ints and
  doubles both become JSON numbers)."""
  (kind, v), = value.items()
  return float(v) if kind in ('int', 'double') else v


def _run_module(argv: List[str], env: Dict[str, str], cwd: str, log_path: str) -> None:
  """In the forked child: what `python -m <module> <args>` does, in the pod."""
  import runpy  # pylint: disable=g-import-not-at-top
  os.chdir(cwd)
  os.environ.clear()
  os.environ.update(env)
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  sys.stdout.flush()
  sys.stderr.flush()
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  sys.argv = argv[2:]  # runpy sets sys.argv[0] to the module's file, as `python -m` does
  runpy.run_module(argv[2], run_name='__main__', alter_sys=True)


class Backend:
  """One KFP installation: its object store, ML Metadata and cache persist across runs."""

  def __init__(self, workdir: str, mode: str = 'oss', publish_logs: bool = True,
               fork: bool = True, preload: Optional[List[str]] = None):
    if mode not in ('oss', 'vertex'):
      raise ValueError(mode)
    self.workdir = workdir
    self.mode = mode
    self.publish_logs = publish_logs and mode == 'oss'
    self.store = os.path.join(workdir, 'object-store')
    self.artifacts: Dict[int, Dict[str, Any]] = {}
    self.cache: Dict[str, Dict[str, int]] = {}
    self._next_id = 1
    self._context = None
    if fork:
      self._context = multiprocessing.get_context('forkserver')
      self._context.set_forkserver_preload(preload or [])

  # ---- storage ------------------------------------------------------------------------------

  def store_path(self, uri: str) -> str:
    """Where a remote URI's object lives in the stand-in object store."""
    for prefix, directory in MOUNTED.items():
      if uri.startswith(prefix):
        return os.path.join(self.store, directory, uri[len(prefix):])
    return uri  # a local path stands in for gs:// on Vertex: gfile writes it directly

  def put(self, local: str, uri: str) -> None:
    _copy(local, self.store_path(uri))

  # ---- a run --------------------------------------------------------------------------------

  def run(self, spec: Dict[str, Any], pipeline_root: str,
          run_id: Optional[str] = None) -> PipelineRun:
    """Runs the root DAG's tasks in dependency order; raises TaskFailed on the first failure
    (the other tasks do not start: KFP's default is to stop at a failed task)."""
    # backend/src/apiserver/template/v2_template.go: only schema 2.1.0 is accepted.
    if self.mode == 'oss' and spec.get('schemaVersion') != '2.1.0':
      raise ValueError(f'KFP only supports schema version 2.1.0, but the pipeline spec has '
                       f'version {spec.get("schemaVersion")}')
    run_id = run_id or str(uuid.uuid4())
    pipeline_name = spec['pipelineInfo']['name']
    # backend/src/v2/driver/root_dag.go: the run's root is <pipeline root>/<pipeline>/<run>.
    run_root = '/'.join([pipeline_root.rstrip('/'), pipeline_name, run_id])
    tasks = spec['root']['dag']['tasks']
    done: Dict[str, TaskRun] = {}
    while len(done) < len(tasks):
      ready = sorted(n for n, t in tasks.items() if n not in done and
                     all(d in done for d in t.get('dependentTasks', [])))
      if not ready:
        raise ValueError(f'cycle among {sorted(set(tasks) - set(done))}')
      for name in ready:
        done[name] = self._run_task(spec, name, run_root, pipeline_name, run_id, done)
    return PipelineRun(run_id, done, self)

  def _input_artifact(self, artifact_id: int, producer_type: Dict[str, Any]) -> Dict[str, Any]:
    record = self.artifacts[artifact_id]
    if self.mode == 'vertex':
      # Vertex keeps the producer's type and names artifacts by resource name.
      return {'name': f'projects/1/locations/us-central1/metadataStores/default/artifacts/'
                      f'{artifact_id}',
              'type': producer_type, 'uri': record['uri'], 'metadata': record['metadata']}
    # backend/src/v2/metadata/client.go GetOutputArtifactsByExecutionId reads artifacts back
    # with an empty schema, and converter.go toRuntimeArtifact names them by MLMD id and
    # turns their custom properties into metadata.
    return {'name': str(artifact_id), 'type': {'instanceSchema': ''}, 'uri': record['uri'],
            'metadata': {k: _metadata_value(v) for k, v in record['custom'].items()}}

  def _run_task(self, spec, name, run_root, pipeline_name, run_id, done) -> TaskRun:
    started = time.time()
    task = spec['root']['dag']['tasks'][name]
    component = spec['components'][task['componentRef']['name']]
    container = spec['deploymentSpec']['executors'][component['executorLabel']]['container']
    for unsupported in ('triggerPolicy', 'iteratorPolicy', 'parameterIterator'):
      if unsupported in task:
        raise NotImplementedError(f'{name}: {unsupported}')

    # Parameters: backend/src/v2/driver/resolve.go resolveInputParameter. Only
    # runtimeValue.constant is resolved here (no root inputs in these specs); the deprecated
    # constantValue is an error. The driver fills parameterValues only.
    parameters = {}
    for key, value in task.get('inputs', {}).get('parameters', {}).items():
      runtime = value.get('runtimeValue', {})
      if 'constant' in runtime:
        parameters[key] = runtime['constant']
      elif 'constantValue' in runtime:
        raise ValueError(f'{name}: param runtime value spec of type '
                         '*pipelinespec.ValueOrRuntimeParameter_ConstantValue not implemented')
      else:
        raise NotImplementedError(f'{name}: parameter {key}: {value}')
    # launcher_v2.go addDefaultParams: defaults of parameters nobody set.
    for key, definition in component.get('inputDefinitions', {}).get('parameters', {}).items():
      if key not in parameters and 'defaultValue' in definition:
        parameters[key] = definition['defaultValue']

    # Input artifacts: resolve.go, taskOutputArtifact from the producer's execution.
    artifacts, artifact_ids = {}, {}
    for key, value in task.get('inputs', {}).get('artifacts', {}).items():
      source = value['taskOutputArtifact']
      producer = spec['components'][spec['root']['dag']['tasks'][source['producerTask']][
          'componentRef']['name']]
      artifact_id = done[source['producerTask']].outputs[source['outputArtifactKey']]
      producer_type = producer['outputDefinitions']['artifacts'][source['outputArtifactKey']][
          'artifactType']
      artifacts[key] = {'artifacts': [self._input_artifact(artifact_id, producer_type)]}
      artifact_ids[key] = [str(artifact_id)]

    # Outputs: backend/src/v2/driver/driver.go provisionOutputs. With log publishing on, an
    # extra `executor-logs` output of type system.Artifact; URIs
    # <run root>/<task>/<salt>/<output>.
    output_specs = dict(component.get('outputDefinitions', {}).get('artifacts', {}))
    if self.publish_logs:
      output_specs[LOGS_OUTPUT] = {'artifactType': {'schemaTitle': 'system.Artifact'}}
    salt = uuid.uuid4().hex
    task_dir = '/'.join([run_root, f'{name}_{salt}' if self.mode == 'vertex' else name])
    outputs = {
        key: {'artifacts': [{'uri': '/'.join([task_dir, key] if self.mode == 'vertex'
                                             else [task_dir, salt, key]),
                             'type': out['artifactType'],
                             'metadata': dict(out.get('metadata', {}))}]}
        for key, out in output_specs.items()}

    pod = os.path.join(self.workdir, 'pods', f'{run_id}-{name}')
    os.makedirs(pod)
    if self.mode == 'oss':
      output_file = os.path.join(pod, OUTPUT_METADATA_FILE.lstrip('/'))
    else:  # Vertex: <task dir>/executor_output.json on the pipeline root (tfx's entrypoint)
      output_file = os.path.join(self.store_path(task_dir), 'executor_output.json')
    executor_input = {'inputs': {'parameterValues': parameters, 'artifacts': artifacts},
                      'outputs': {'artifacts': outputs, 'outputFile': output_file}}
    executor_input = executor_input_utils.executor_input_to_dict(
        json_format.ParseDict(executor_input, pipeline_spec_pb2.ExecutorInput()),
        json_format.ParseDict(component, pipeline_spec_pb2.ComponentSpec()))
    log_path = os.path.join(pod, 'log.txt')

    hook_ran = False
    hook = container.get('lifecycle', {}).get('preCacheCheck')
    if hook and self.mode == 'vertex':
      # Vertex runs the pre-cache-check hook with the task's executor input and applies what
      # it writes to the output file before the cache check (its API's
      # `pre_caching_check`); tfx's entrypoint reads that file again when the executor runs.
      self._execute(name + ' (pre-cache check)', hook['command'] + hook['args'],
                    executor_input, pod, log_path, pipeline_name, run_root)
      hook_ran = True
    # Open-source KFP never reads `lifecycle`: nothing in backend/src refers to it; the pod
    # runs command + args only (backend/src/v2/compiler/argocompiler/container.go).

    # Cache: backend/src/v2/driver/cache.go getFingerPrint and cacheutils/cache.go
    # GenerateCacheKey, only when the task enables caching: a SHA-256 over the input artifact
    # names (MLMD ids), input parameter values, output artifact and parameter specs, and the
    # container's image and unsubstituted command + args, scoped to the pipeline's name.
    fingerprint = None
    if task.get('cachingOptions', {}).get('enableCache'):
      key = {'pipeline': pipeline_name, 'inputArtifactNames': artifact_ids,
             'inputParameterValues': executor_input['inputs'].get('parameterValues', {}),
             'outputArtifactsSpec': output_specs,
             'outputParametersSpec': component.get('outputDefinitions', {}).get(
                 'parameters', {}),
             'containerSpec': {'image': container['image'],
                               'cmdArgs': container['command'] + container['args']}}
      fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
      if fingerprint in self.cache:
        shutil.rmtree(pod)
        return TaskRun(name, 'CACHED', dict(self.cache[fingerprint]), None, '', hook_ran)

    self._execute(name, container['command'] + container['args'], executor_input, pod,
                  log_path, pipeline_name, run_root, outputs=outputs)
    # launcher_v2.go getExecutorOutputFile: strict JSON parse, a missing file is no output.
    executor_output = pipeline_spec_pb2.ExecutorOutput()
    if os.path.exists(output_file):
      with open(output_file) as f:
        json_format.Parse(f.read(), executor_output)
    produced = json_format.MessageToDict(executor_output).get('artifacts', {})
    recorded = {}
    for key, artifact_list in outputs.items():
      artifact = dict(artifact_list['artifacts'][0])
      # launcher_v2.go mergeRuntimeArtifacts: the executor output's URI and metadata win.
      if produced.get(key, {}).get('artifacts'):
        merged = produced[key]['artifacts'][0]
        artifact['uri'] = merged.get('uri') or artifact['uri']
        artifact['metadata'] = dict(artifact['metadata'], **merged.get('metadata', {}))
      if self.mode == 'oss':
        self._upload(name, key, artifact['uri'], pod, run_root)
      recorded[key] = self._record(key, artifact)
    with open(log_path, errors='replace') as f:
      log = f.read()
    shutil.rmtree(pod)
    if fingerprint:
      self.cache[fingerprint] = recorded
    return TaskRun(name, 'RUN', recorded, executor_input, log, hook_ran,
                   time.time() - started)

  def _upload(self, task: str, key: str, uri: str, pod: str, run_root: str) -> None:
    """launcher_v2.go uploadOutputArtifacts: whatever is at the URI's local path goes to the
    bucket; an unrecognised URI is skipped with a warning, and so is a missing local path."""
    local = _local_path(uri, pod)
    if not local:
      print(f'warning: {task}: output {key} has no recognized storage URI {uri!r}; '
            'skipping upload', file=sys.stderr)
      return
    bucket = run_root.split('://', 1)[0] + '://' + run_root.split('://', 1)[1].split('/')[0]
    if not uri.startswith(bucket + '/'):
      # objectstore KeyFromURI: the URI must be in the run's bucket.
      raise ValueError(f'{task}: failed to upload output artifact {key!r}: {uri!r} is not in '
                       f'bucket {bucket}')
    if os.path.exists(local):
      self.put(local, uri)

  def _record(self, key: str, artifact: Dict[str, Any]) -> int:
    """metadata/client.go RecordArtifact: the artifact and its metadata as custom properties
    (converter.go toMLMDArtifact), plus the output's display name."""
    artifact_id = self._next_id
    self._next_id += 1
    custom = {k: _mlmd_value(v) for k, v in artifact['metadata'].items()
              if k != '_kfp_workspace'}
    custom.setdefault('display_name', {'string': key})
    self.artifacts[artifact_id] = {'uri': artifact['uri'], 'type': artifact['type'],
                                   'custom': custom, 'metadata': artifact['metadata']}
    return artifact_id

  def _execute(self, label, command, executor_input, pod, log_path, pipeline_name, run_root,
               outputs=None) -> None:
    """The launcher's part around the user command (launcher_v2.go execute)."""
    if self.mode == 'oss':
      # downloadArtifacts: each input artifact's object to its local path.
      for artifact_list in executor_input['inputs'].get('artifacts', {}).values():
        uri = artifact_list['artifacts'][0]['uri']
        local = _local_path(uri, pod)
        if local:
          _copy(self.store_path(uri), local)
      # prepareOutputFolders: the parent directory of each output's local path.
      for artifact_list in executor_input['outputs'].get('artifacts', {}).values():
        local = _local_path(artifact_list['artifacts'][0]['uri'], pod)
        os.makedirs(os.path.dirname(local), exist_ok=True)
    # executeV2: placeholders filled from the executor input (`{{$}}` holds the remote URIs).
    argv = placeholder_utils.replace_placeholders(
        command, executor_input, pipeline_resource_name=pipeline_name,
        task_resource_name=label, pipeline_root=run_root)
    if argv[0] != 'python' or argv[1] != '-m':
      raise NotImplementedError(f'{label}: command {argv[:3]} (expected python -m <module>)')
    env = dict(os.environ, **{MOUNT_ROOT_ENV: pod, 'TMPDIR': os.path.join(pod, 'tmp')})
    os.makedirs(env['TMPDIR'], exist_ok=True)
    # getLogWriter: with log publishing, the output goes to the executor-logs artifact too.
    logs = (outputs or {}).get(LOGS_OUTPUT)
    with open(log_path, 'ab') as log:
      if self._context is not None:
        log.flush()
        process = self._context.Process(target=_run_module, args=(argv, env, pod, log_path))
        process.start()
        process.join()
        code = process.exitcode
      else:
        code = subprocess.run([sys.executable] + argv[1:], env=env, cwd=pod, stdout=log,
                              stderr=subprocess.STDOUT, check=False).returncode
    if logs:
      _copy(log_path, _local_path(logs['artifacts'][0]['uri'], pod))
    if code != 0:
      with open(log_path, errors='replace') as f:
        raise TaskFailed(label, f.read(), code)
