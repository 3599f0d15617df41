"""The container entrypoint of every step of the compiled Kubeflow pipeline.

It takes TFX's arguments (`--executor_class_path`, `--json_serialized_invocation_args`,
`--json_serialized_inputs_spec_args`, then Beam's), fixes the executor input the Kubeflow
Pipelines v2 backend hands over, and runs TFX's own entrypoint
(tfx/orchestration/kubeflow/v2/container/kubeflow_v2_run_executor.py) on the result. Each fix
is for one behaviour of the open-source backend (docs/kubeflow.md cites the backend code):

- input artifacts arrive with an empty type (`instanceSchema: ""`: the driver reads them back
  from ML Metadata without a schema), and TFX finds an artifact's class from its type: the type
  is taken from the step's inputs spec, which the compiled spec passes to every step;
- the driver adds an `executor-logs` output (type `system.Artifact`) when log publishing is on;
  TFX knows no such output and cannot load its type: it is dropped (the launcher, not the step,
  writes the logs there);
- artifact URIs are remote (`minio://…`, `s3://…`) and tf.io.gfile opens neither; the launcher
  has downloaded the inputs to, and uploads the outputs from, local paths (`/minio/…`,
  `/s3/…`): the step works on those, and its executor output names the remote URIs again
  (the launcher uploads from, and records, the URI it reads there). `gs://` URIs are left as
  they are: gfile writes them directly, which also lets Dataflow workers reach them.

On Vertex AI Pipelines none of these apply (types kept, no extra output, `gs://` URIs) and the
executor input passes through unchanged. `LAUNCHER_MOUNT_ROOT` (default `/`) is where the
launcher's local paths start; only the tests set it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

# The launcher's local path for a remote URI (backend/src/v2/component/launcher_v2.go,
# LocalPathForURI); gs:// is absent on purpose (see above).
MOUNTED_SCHEMES = {'minio://': 'minio', 's3://': 's3'}
LOGS_OUTPUT_PREFIX = 'executor-logs'
LOGS_OUTPUT_TYPE = 'system.Artifact'
MOUNT_ROOT_ENV = 'LAUNCHER_MOUNT_ROOT'


def local_path(uri: str, mount_root: str) -> str:
  """Where the launcher puts a remote artifact URI in the pod ('' if it is not mounted)."""
  for prefix, directory in MOUNTED_SCHEMES.items():
    if uri.startswith(prefix):
      return os.path.join(mount_root, directory, uri[len(prefix):])
  return ''


def remote_uri(path: str, mount_root: str) -> str:
  """The inverse of `local_path` (the path itself if it is not under a mount)."""
  for prefix, directory in MOUNTED_SCHEMES.items():
    base = os.path.join(mount_root, directory) + os.sep
    if path.startswith(base):
      return prefix + path[len(base):]
  return path


def _has_type(artifact: Dict[str, Any]) -> bool:
  artifact_type = artifact.get('type') or {}
  return bool(artifact_type.get('schemaTitle') or artifact_type.get('instanceSchema'))


def fix_executor_input(executor_input: Dict[str, Any], inputs_spec: Optional[Dict[str, Any]],
                       mount_root: str) -> Dict[str, Any]:
  """The executor input as TFX's entrypoint needs it (the module docstring's fixes)."""
  fixed = json.loads(json.dumps(executor_input))
  spec_artifacts = (inputs_spec or {}).get('artifacts', {})
  inputs = fixed.setdefault('inputs', {})
  for key, artifact_list in inputs.get('artifacts', {}).items():
    for artifact in artifact_list.get('artifacts', []):
      if not _has_type(artifact):
        if key not in spec_artifacts:
          raise ValueError(f'input artifact {key!r} has no type and the inputs spec does not '
                           'name one')
        artifact['type'] = dict(spec_artifacts[key]['artifactType'])
  outputs = fixed.setdefault('outputs', {})
  artifacts = outputs.get('artifacts', {})
  for key in list(artifacts):
    types = {(a.get('type') or {}).get('schemaTitle') for a in artifacts[key].get('artifacts', [])}
    if key.startswith(LOGS_OUTPUT_PREFIX) and types == {LOGS_OUTPUT_TYPE}:
      del artifacts[key]
  for section in (inputs, outputs):
    for artifact_list in section.get('artifacts', {}).values():
      for artifact in artifact_list.get('artifacts', []):
        path = local_path(artifact.get('uri', ''), mount_root)
        if path:
          artifact['uri'] = path
  return fixed


def fix_executor_output(output_file: str, mount_root: str) -> None:
  """Names the remote URIs again in the executor output TFX wrote: the launcher uploads an
  output from the local path of the URI it finds there, and records that URI in ML Metadata
  (a local path is not uploaded at all)."""
  if not os.path.exists(output_file):
    return
  with open(output_file) as f:
    output = json.load(f)
  for artifact_list in output.get('artifacts', {}).values():
    for artifact in artifact_list.get('artifacts', []):
      if 'uri' in artifact:
        artifact['uri'] = remote_uri(artifact['uri'], mount_root)
      # Properties that name an artifact (e.g. the blessing's `current_model`) too.
      metadata = artifact.get('metadata', {})
      for key, value in metadata.items():
        if isinstance(value, str):
          metadata[key] = remote_uri(value, mount_root)
  with open(output_file, 'w') as f:
    json.dump(output, f)


def run(args, beam_args: List[str]) -> None:
  """Fixes the executor input of TFX's parsed arguments, then runs TFX's entrypoint."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor  # pylint: disable=g-import-not-at-top
  mount_root = os.environ.get(MOUNT_ROOT_ENV, '/')
  inputs_spec = (json.loads(args.json_serialized_inputs_spec_args)
                 if args.json_serialized_inputs_spec_args else None)
  executor_input = fix_executor_input(json.loads(args.json_serialized_invocation_args),
                                      inputs_spec, mount_root)
  args.json_serialized_invocation_args = json.dumps(executor_input)
  kubeflow_v2_run_executor._run_executor(args, beam_args)  # pylint: disable=protected-access
  output_file = executor_input.get('outputs', {}).get('outputFile', '')
  if output_file and '://' not in output_file:
    fix_executor_output(output_file, mount_root)


def _parse_flags(argv: List[str]):
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor  # pylint: disable=g-import-not-at-top
  return kubeflow_v2_run_executor._parse_flags(argv[1:])  # pylint: disable=protected-access


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(lambda parsed: run(*parsed), flags_parser=_parse_flags)
