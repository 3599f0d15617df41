"""Beam presets: the config's `beam` section -> `beam_pipeline_args` for TFX's Beam components."""

from __future__ import annotations

from typing import List, Optional

from pipeline.config import BeamConfig


def beam_pipeline_args(beam: BeamConfig, image: Optional[str] = None) -> List[str]:
  """Arguments for the configured runner.

  - direct: the DirectRunner in this process (`in_memory`) or with worker processes
    (`multi_processing`, `direct_num_workers: 0` = one per core), for local runs;
  - dataflow: the DataflowRunner, workers in the pipeline image (`image`) so they have this
    package;
  - flink / spark: the portable runner against a job server (`job_endpoint`), SDK workers in
    the pipeline image (`environment_type: DOCKER`) or an external worker pool.
  """
  if beam.runner == 'direct':
    args = ['--runner=DirectRunner', f'--direct_running_mode={beam.direct_running_mode}',
            f'--direct_num_workers={beam.direct_num_workers}']
  elif beam.runner == 'dataflow':
    args = ['--runner=DataflowRunner', f'--project={beam.project}', f'--region={beam.region}',
            f'--temp_location={beam.temp_location}']
    if image:
      args.append(f'--sdk_container_image={image}')
  else:  # flink, spark: Beam's portable runner in front of the cluster's job server
    args = ['--runner=PortableRunner', f'--job_endpoint={beam.job_endpoint}',
            f'--environment_type={beam.environment_type}']
    environment = beam.environment_config or (image if beam.environment_type == 'DOCKER'
                                              else None)
    if environment:
      args.append(f'--environment_config={environment}')
  return args + list(beam.extra_args)
