"""Runs the pipeline locally: LocalDagRunner, Beam DirectRunner, SQLite ML Metadata.

Layout of a run's output directory:

    <output_dir>/pipeline_root/     artifacts of every component
    <output_dir>/metadata.sqlite    ML Metadata (lineage, cache)
    <output_dir>/run_summary.json   written after every run, also a failed one
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from components.training_worker import job_description

from pipeline.beam_args import beam_pipeline_args as make_beam_args
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline, trainer_properties
from pipeline.run_summary import build_summary, read_run, write_summary


class PipelineRunError(RuntimeError):
  """A component failed; `summary` holds what the run did up to then."""

  def __init__(self, message: str, summary: Dict[str, Any]):
    super().__init__(message)
    self.summary = summary


def metadata_config(output_dir: str):
  return tfx.orchestration.metadata.sqlite_metadata_connection_config(
      os.path.join(output_dir, 'metadata.sqlite'))


def run_local(config: PipelineConfig, output_dir: str,
              beam_pipeline_args: Optional[List[str]] = None,
              enable_cache: bool = True) -> Dict[str, Any]:
  """Runs the whole pipeline and returns (and writes) the run summary.

  Raises PipelineRunError, after writing the summary, when a component fails.
  """
  output_dir = os.path.abspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  connection = metadata_config(output_dir)
  pipeline = create_pipeline(
      config,
      pipeline_root=os.path.join(output_dir, 'pipeline_root'),
      metadata_connection_config=connection,
      beam_pipeline_args=beam_pipeline_args or make_beam_args(config.beam),
      enable_cache=enable_cache)
  error: Optional[BaseException] = None
  # TFX's Beam executors parse sys.argv with absl flags; the arguments of whatever program
  # called us (pytest's -v, say, which absl reads as --verbosity) are not theirs to read.
  caller_argv = sys.argv
  sys.argv = caller_argv[:1]
  try:
    tfx.orchestration.LocalDagRunner().run(pipeline)
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    sys.argv = caller_argv
  summary = build_summary(config, metadata_store.MetadataStore(connection))
  if error is not None:
    summary['error'] = f'{type(error).__name__}: {error}'
  summary['summary_path'] = write_summary(summary, output_dir)
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
