"""`create_pipeline(config, ...)` compiled into a Kubeflow Pipelines v2 spec that the
open-source KFP v2 backend and Vertex AI Pipelines both run.

The Kubeflow pipeline is the same definition the local runner runs. What differs between the
two orchestrators is only this list (`RUNNER_DIFFERENCES`):

- pipeline_root: `kubeflow.pipeline_root` (object storage the cluster reaches) instead of the
  local run directory;
- metadata: the cluster's ML Metadata, configured by KFP, instead of a SQLite file;
- image: every component runs in `kubeflow.image` (deploy/Dockerfile);
- Beam: `beam_pipeline_args` from the config's `beam` preset, with the pipeline image as the
  SDK worker image where the runner needs one.

TFX's KubeflowV2DagRunner writes the spec; `adapt_spec` then makes three changes to it
(docs/kubeflow.md says why each is needed, citing the backend code):

- every step runs `python -m pipeline.kubeflow.entrypoint` (ENTRYPOINT) in place of TFX's
  entrypoint, with the same arguments: it fixes what the open-source backend hands over, then
  runs TFX's;
- a step whose container has a `lifecycle.preCacheCheck` hook (a file-based ExampleGen: it
  reads files KFP does not track) is never served from KFP's cache: the backend's cache key
  holds its parameters and container only, which do not change from one day to the next;
- the spec must be schema 2.1.0 with parameters as `runtimeValue.constant` (checked by
  `check_spec`, before writing and again before any upload).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Iterator, Tuple

import yaml

from pipeline.beam_args import beam_pipeline_args
from pipeline.config import ConfigError, PipelineConfig
from pipeline.kubeflow import entrypoint
from pipeline.pipeline import create_pipeline

RUNNER_DIFFERENCES = ('pipeline_root', 'metadata_connection_config', 'image',
                      'beam_pipeline_args')
# The only schema version the open-source API server accepts (backend/src/apiserver/template/
# v2_template.go); Vertex AI Pipelines accepts it too.
SCHEMA_VERSION = '2.1.0'
ENTRYPOINT = ['python', '-m', 'pipeline.kubeflow.entrypoint']
# Pipeline roots KFP can store artifacts under; the launcher mounts them at local paths.
ROOT_SCHEMES = ('gs', 's3', 'minio')
# Schemes tf.io.gfile opens in the pipeline image (TensorFlow 2.16 has GCS built in; S3 moved
# to tensorflow-io, and nothing opens minio://).
GFILE_REMOTE_SCHEMES = ('gs',)
# Roots whose artifacts the steps see only as the launcher's local copies (/minio/…, /s3/…):
# the schemes the entrypoint maps to those paths.
MOUNTED_ROOT_SCHEMES = tuple(prefix[:-len('://')] for prefix in entrypoint.MOUNTED_SCHEMES)


class SpecError(ValueError):
  """A compiled spec the Kubeflow Pipelines backend would refuse or mis-run."""


def scheme(uri: str) -> str:
  return uri.split('://', 1)[0] if '://' in uri else ''


def check_storage(config: PipelineConfig) -> None:
  """Refuses, naming the key, storage the steps cannot reach on Kubeflow.

  Artifacts live under the pipeline root and the backend moves them (the launcher mounts
  `minio://`, `s3://` and `gs://` roots at local paths). Everything else a step opens itself,
  with tf.io.gfile: the logs, the curated schema, the push directory and the statistics
  history. Those must be `gs://` or a path every step's pod sees (a mounted volume).
  """
  root = config.kubeflow.pipeline_root
  if scheme(root) not in ROOT_SCHEMES:
    schemes = ', '.join(s + '://' for s in ROOT_SCHEMES)
    raise ConfigError(f'kubeflow.pipeline_root: {root!r} is not object storage Kubeflow '
                      f'Pipelines can write artifacts to ({schemes})')
  if scheme(root) in MOUNTED_ROOT_SCHEMES and config.beam.runner != 'direct':
    raise ConfigError(
        f'kubeflow.pipeline_root: {root!r} reaches the steps only through local copies the '
        f'Kubeflow launcher makes in the step\'s pod, which Beam workers of runner '
        f'{config.beam.runner!r} cannot see (beam.runner); use a gs:// root or beam.runner: '
        'direct')
  opened = {'data.input_base': config.data.input_base, 'data.schema': config.data.schema,
            'serving.push_dir': config.serving.push_dir,
            'kubeflow.state_dir': state_dir(config)}
  for key, path in opened.items():
    if path and scheme(path) and scheme(path) not in GFILE_REMOTE_SCHEMES:
      hint = ('; kubeflow.state_dir defaults to <pipeline_root>/state, which works with a '
              'gs:// root only: set kubeflow.state_dir'
              if key == 'kubeflow.state_dir' and not config.kubeflow.state_dir else '')
      raise ConfigError(
          f'{key}: {path!r} is opened by the steps themselves with tf.io.gfile, which opens '
          f'gs:// and local paths but not {scheme(path)}:// (only artifacts under '
          f'kubeflow.pipeline_root are moved by Kubeflow); use gs:// or a volume mounted in '
          f'every step{hint}')


def state_dir(config: PipelineConfig) -> str:
  """Where steps keep what outlives a run and is not an artifact (the statistics history)."""
  return config.kubeflow.state_dir or os.path.join(config.kubeflow.pipeline_root, 'state')


def create_kubeflow_pipeline(config: PipelineConfig):
  """The shared pipeline with the Kubeflow choices of RUNNER_DIFFERENCES applied."""
  return create_pipeline(
      config,
      pipeline_root=config.kubeflow.pipeline_root,
      metadata_connection_config=None,
      beam_pipeline_args=beam_pipeline_args(config.beam, image=config.kubeflow.image),
      state_dir=state_dir(config))


def _tasks(spec: Dict[str, Any]) -> Iterator[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
  """(task name, task, its executor's container) for each task of the root DAG."""
  components = spec['components']
  executors = spec['deploymentSpec']['executors']
  for name, task in spec['root']['dag']['tasks'].items():
    executor = executors[components[task['componentRef']['name']]['executorLabel']]
    yield name, task, executor.get('container', {})


def check_spec(spec: Dict[str, Any]) -> None:
  """Raises SpecError naming what the open-source backend would refuse or not resolve."""
  version = spec.get('schemaVersion')
  if version != SCHEMA_VERSION:
    raise SpecError(f'pipeline spec schema version {version!r}: the Kubeflow Pipelines API '
                    f'server accepts only {SCHEMA_VERSION} (compile with `mtlp compile`)')
  for name, task, container in _tasks(spec):
    if not container:
      raise SpecError(f'task {name}: not a container step (open-source Kubeflow Pipelines '
                      'v2 runs container and importer steps only)')
    for parameter, value in task.get('inputs', {}).get('parameters', {}).items():
      if 'constantValue' in value.get('runtimeValue', {}):
        raise SpecError(f'task {name}: parameter {parameter} is a deprecated '
                        'runtimeValue.constantValue, which the KFP v2 driver does not resolve')


def adapt_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
  """The changes of the module docstring, in place; returns the spec."""
  for _, task, container in _tasks(spec):
    container['command'] = list(ENTRYPOINT)
    if 'lifecycle' in container:
      task['cachingOptions'] = {'enableCache': False}
  check_spec(spec)
  return spec


def load_spec(path: str) -> Dict[str, Any]:
  with open(path) as f:
    return yaml.safe_load(f)


def compile_pipeline(config: PipelineConfig, output_path: str) -> str:
  """Writes the KFP v2 pipeline spec (YAML) and returns its path."""
  from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner  # pylint: disable=g-import-not-at-top
  check_storage(config)
  output_path = os.path.abspath(output_path)
  os.makedirs(os.path.dirname(output_path), exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            display_name=config.name, default_image=config.kubeflow.image,
            use_pipeline_spec_2_1=True),
        output_dir=tmp, output_filename='pipeline.yaml')
    runner.run(create_kubeflow_pipeline(config))
    spec = adapt_spec(load_spec(os.path.join(tmp, 'pipeline.yaml')))
  with open(output_path, 'w') as f:
    f.write(f'# PIPELINE DEFINITION\n# Name: {config.name}\n')
    yaml.safe_dump(spec, f, sort_keys=True)
  return output_path
