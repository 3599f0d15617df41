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

from pipeline.beam_args import beam_pipeline_args as make_beam_args
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from pipeline.run_summary import build_summary, write_summary


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
