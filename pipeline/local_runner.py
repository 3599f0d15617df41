"""Runs the pipeline locally: LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

Layout of a run's output directory:

    <output_dir>/pipeline_root/     artifacts of every component
    <output_dir>/metadata.sqlite    ML Metadata (lineage, cache)
    <output_dir>/run_summary.json   written after every run, also a failed one
    <output_dir>/artifact_files.json  the files of each artifact (see artifact_files.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components.training_worker import job_description

from pipeline import artifact_files
from pipeline.beam_args import beam_pipeline_args as make_beam_args
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline, trainer_properties
from pipeline.run_summary import build_summary, read_run, write_summary


class PipelineRunError(RuntimeError):
  """A component failed; `summary` holds what the run did up to then."""

  def __init__(self, message: str, summary: Dict[str, Any]):
    super().__init__(message)
    self.summary = summary


class RunInterrupted(PipelineRunError):
  """The run was interrupted (Ctrl-C); `summary` says so and holds what it did up to then."""


class OutputDirBusy(RuntimeError):
  """Another run is using the output directory."""


LOCK_FILE = '.run.lock'


@contextlib.contextmanager
def output_dir_lock(output_dir: str) -> Iterator[None]:
  """Holds an exclusive lock on `<output_dir>/.run.lock` (with this process's id in it), so two
  runs never share one output directory (its ML Metadata, pipeline root and run summary): the
  second raises OutputDirBusy naming the first. The lock goes with the process, even killed."""
  path = os.path.join(output_dir, LOCK_FILE)
  handle = open(path, 'a+')  # pylint: disable=consider-using-with
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or 'unknown'
      raise OutputDirBusy(f'output directory {output_dir} is in use by another run ({holder}); '
                          'wait for it to finish or choose another --output') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()}, started {time.strftime("%Y-%m-%d %H:%M:%S")}')
    handle.flush()
    yield
  finally:
    handle.close()


def metadata_config(output_dir: str):
  return tfx.orchestration.metadata.sqlite_metadata_connection_config(
      os.path.join(output_dir, 'metadata.sqlite'))


def run_local(config: PipelineConfig, output_dir: str,
              beam_pipeline_args: Optional[List[str]] = None,
              enable_cache: bool = True) -> Dict[str, Any]:
  """Runs the whole pipeline and returns (and writes) the run summary.

  Raises PipelineRunError, after writing the summary, when a component fails; RunInterrupted
  (the summary marked `interrupted`) on Ctrl-C; OutputDirBusy when another run holds the
  output directory. ML Metadata is left as the run left it, so the next run with the same
  output directory reuses what finished.
  """
  output_dir = os.path.abspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  with output_dir_lock(output_dir):
    return _run_locked(config, output_dir, beam_pipeline_args, enable_cache)


def _run_locked(config: PipelineConfig, output_dir: str,
                beam_pipeline_args: Optional[List[str]], enable_cache: bool) -> Dict[str, Any]:
  connection = metadata_config(output_dir)
  pipeline_root = os.path.join(output_dir, 'pipeline_root')
  store = metadata_store.MetadataStore(connection)
  # An artifact that lost files since an earlier run is not reused from the cache.
  recreated = artifact_files.retire_damaged(store, output_dir) if enable_cache else []
  pipeline = create_pipeline(
      config,
      pipeline_root=pipeline_root,
      metadata_connection_config=connection,
      beam_pipeline_args=beam_pipeline_args or make_beam_args(config.beam),
      enable_cache=enable_cache)
  error: Optional[BaseException] = None
  # TFX's Beam executors parse sys.argv with absl flags; the arguments of whatever program
  # called us (pytest's -v, say, which absl reads as --verbosity) are not theirs to read.
  caller_argv = sys.argv
  sys.argv = caller_argv[:1]
  interrupted = False
  try:
    tfx.orchestration.LocalDagRunner().run(pipeline)
  except KeyboardInterrupt:
    interrupted = True
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    sys.argv = caller_argv
  artifact_files.record(store, output_dir, pipeline_root)
  summary = build_summary(config, store)
  summary['interrupted'] = interrupted
  summary['recreated_artifacts'] = [artifact_files.describe(e) for e in recreated]
  if interrupted:
    summary['error'] = 'interrupted (Ctrl-C)'
  elif error is not None:
    summary['error'] = f'{type(error).__name__}: {error}'
  summary['summary_path'] = write_summary(summary, output_dir)
  if interrupted:
    raise RunInterrupted('interrupted (Ctrl-C)', summary)
  if error is not None:
    raise PipelineRunError(str(error), summary) from error
  return summary


def job_for_local_run(run_dir: str, config: PipelineConfig, output_dir: str) -> Dict[str, Any]:
  """The Trainer step's job description for the Transform output of a finished local run
  (`run_local`), writing the model and model run under `output_dir`: trains on a run's data
  with workers outside the pipeline (the distributed benchmark, tests)."""
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
  return job_description(inputs, outputs, trainer_properties(config))
