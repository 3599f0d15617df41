"""Kubeflow Pipelines API: upload the compiled spec, start runs, schedule them.

Every run (one-off or recurring) is given `kubeflow.pipeline_root`: the spec holds no pipeline
root, and without one the backend uses its default (`minio://mlpipeline/v2/artifacts` in the
standard manifests). The spec is checked (`compiler.check_spec`: schema 2.1.0, no deprecated
parameter form) before anything is uploaded.

Errors from the KFP API (unreachable host, refused credentials, rejected requests) and bad
cron expressions surface as `KubeflowError`, one line each.

The Trainer step trains in its own pod (`training.workers` processes), or, with
`kubeflow.trainer: trainjob` or `tfjob`, creates a Kubeflow Trainer v2 TrainJob or a Training
Operator TFJob of `training.workers` pods and waits for it (components/distributed_trainer.py,
docs/distributed.md). That choice
is made by the step's executor at run time, from the config it receives: the compiled graph
is the same.
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
import os
from typing import Any, Dict, Optional

from pipeline.config import ConfigError, PipelineConfig
from pipeline.kubeflow import compiler

# KFP's cron has six fields, seconds first: "0 0 3 * * *" is 03:00:00 every day.
_CRON_FIELD = re.compile(r'^[0-9A-Za-z*/,\-?LW#]+$')


class KubeflowError(RuntimeError):
  """A one-line, user-facing error from compiling, submitting or scheduling."""


def check_cron(cron: str) -> str:
  fields = cron.split()
  if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
    raise KubeflowError(
        f'bad cron expression {cron!r}: Kubeflow Pipelines expects 6 fields, '
        '"second minute hour day-of-month month day-of-week", e.g. "0 0 3 * * *"')
  return cron


def describe_error(error: BaseException, host: str) -> str:
  """One line for an exception raised by the kfp client."""
  import kfp_server_api  # pylint: disable=g-import-not-at-top
  if isinstance(error, kfp_server_api.ApiException):
    message = error.reason or ''
    try:
      body = json.loads(error.body or '{}')
      message = body.get('message') or body.get('error_message') or message
    except (TypeError, ValueError):
      message = (error.body or message).strip().splitlines()[0] if (error.body or message) else ''
    if error.status in (401, 403):
      return (f'the Kubeflow Pipelines API at {host} refused the request (HTTP {error.status}, '
              f'authentication or permissions): {message}')
    if error.status == 0:
      return f'cannot reach the Kubeflow Pipelines API at {host}: {message}'
    return f'the Kubeflow Pipelines API at {host} answered HTTP {error.status}: {message}'
  text = str(error).splitlines()[0] if str(error) else type(error).__name__
  if isinstance(error, (OSError, ConnectionError)) or 'Max retries exceeded' in str(error) or (
      'Connection refused' in str(error)):
    reason = re.search(r'\[Errno [^\]]+\] [^)\']+', str(error))
    return (f'cannot reach the Kubeflow Pipelines API at {host}: '
            f'{reason.group(0) if reason else text}')
  return f'Kubeflow Pipelines request failed: {text}'


def _client(host: str):
  import kfp  # pylint: disable=g-import-not-at-top

  class _Client(kfp.Client):
    """kfp's client, asking the health endpoint once (not 5 times, 5 s apart) at start."""

    def get_kfp_healthz(self, sleep_duration: int = 5):
      del sleep_duration
      return self._healthz_api.get_healthz()

  return _Client(host=host)


def _call(host: str, fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except KubeflowError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise KubeflowError(describe_error(e, host)) from e


def upload(client, config: PipelineConfig, package_path: str, version_name: str
            ) -> Dict[str, str]:
  """Uploads the spec as a new pipeline, or a new version of the existing one."""
  try:
    compiler.check_spec(compiler.load_spec(package_path))
  except compiler.SpecError as e:
    raise KubeflowError(f'{package_path}: {e}') from None
  pipeline_id = client.get_pipeline_id(config.name)
  if pipeline_id is None:
    # A new pipeline comes with its first version: the one just uploaded.
    pipeline = client.upload_pipeline(package_path, pipeline_name=config.name)
    versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1,
                                             sort_by='created_at desc').pipeline_versions
    return {'pipeline_id': pipeline.pipeline_id, 'version_id': versions[0].pipeline_version_id}
  version = client.upload_pipeline_version(package_path, pipeline_version_name=version_name,
                                           pipeline_id=pipeline_id)
  return {'pipeline_id': pipeline_id, 'version_id': version.pipeline_version_id}


def _version_stamp() -> str:
  """Pipeline version name: the UTC upload time."""
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')


def _compile_and_upload(client, config: PipelineConfig, version_name: str) -> Dict[str, str]:
  with tempfile.TemporaryDirectory() as tmp:
    try:
      path = compiler.compile_pipeline(config, os.path.join(tmp, 'pipeline.yaml'))
    except ConfigError as e:
      raise KubeflowError(str(e)) from None
    return upload(client, config, path, version_name)


def submit(config: PipelineConfig, host: str, experiment: Optional[str] = None,
           version_name: Optional[str] = None) -> Dict[str, Any]:
  """Uploads the pipeline (a new version if it exists) and starts a run."""
  def go():
    stamp = version_name or _version_stamp()
    client = _client(host)
    ids = _compile_and_upload(client, config, stamp)
    exp = client.create_experiment(experiment or config.kubeflow.experiment)
    run = client.run_pipeline(exp.experiment_id, f'{config.name}-{stamp}',
                              pipeline_id=ids['pipeline_id'], version_id=ids['version_id'],
                              pipeline_root=config.kubeflow.pipeline_root)
    return dict(ids, run_id=run.run_id, url=f'{host.rstrip("/")}/#/runs/details/{run.run_id}')
  return _call(host, go)


def schedule(config: PipelineConfig, host: str, cron: str,
             experiment: Optional[str] = None) -> Dict[str, Any]:
  """Creates a recurring run: at most one run at a time, no catch-up of missed runs."""
  check_cron(cron)

  def go():
    client = _client(host)
    ids = _compile_and_upload(client, config, _version_stamp())
    exp = client.create_experiment(experiment or config.kubeflow.experiment)
    job = client.create_recurring_run(
        exp.experiment_id, recurring_run_name(config), cron_expression=cron,
        max_concurrency=1, no_catchup=True, pipeline_id=ids['pipeline_id'],
        version_id=ids['version_id'], pipeline_root=config.kubeflow.pipeline_root)
    return dict(ids, recurring_run_id=job.recurring_run_id, cron=cron)
  return _call(host, go)


def recurring_run_name(config: PipelineConfig) -> str:
  return f'{config.name}-scheduled'


def unschedule(config: PipelineConfig, host: str) -> int:
  """Deletes the pipeline's recurring runs; returns how many were deleted."""
  def go():
    client = _client(host)
    name_filter = json.dumps({'predicates': [{'operation': 'EQUALS', 'key': 'display_name',
                                              'stringValue': recurring_run_name(config)}]})
    found = client.list_recurring_runs(filter=name_filter).recurring_runs or []
    for job in found:
      client.delete_recurring_run(job.recurring_run_id)
    return len(found)
  return _call(host, go)
