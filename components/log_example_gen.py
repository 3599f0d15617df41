"""LogExampleGen: JSON-lines impression logs (plain or .gz) -> tf.Examples, bad lines quarantined.

A FileBasedExampleGen, so TFX's file driver (input fingerprints, {SPAN}/{YYYY}-{MM}-{DD}
patterns, range configs) and the Kubeflow V2 ExampleGen launcher apply unchanged. What it adds:

- each line is converted by `components.records.parse_line` against the pipeline config;
- a line that cannot be converted goes, with its file, line number and reason, to the
  `quarantine` output (JSON lines), never dropped silently;
- `quarantine/counts.json` counts ingested lines and rejected lines by reason; the same counts
  are custom properties of the quarantine artifact (`num_ingested`, `num_quarantined`,
  `reasons`), so ML Metadata answers "how much was rejected, and why";
- if the rejected fraction exceeds `data.max_rejected_fraction`, the component fails with the
  top reasons and the quarantine location, before anything trains on the data.

Train/eval are split by a hash of the config's split key (`partition_feature_name`), so a user
is never in both splits.

Daily partitions: with `{SPAN}` or `{YYYY}-{MM}-{DD}` in the file pattern, TFX's driver (local
or Kubeflow) resolves the latest span as usual; the executor then reads that span and the
`data.window_spans - 1` spans before it (missing days are allowed), so each scheduled run trains
on a rolling window of the most recent days. The spans read are recorded on the quarantine
artifact (`spans`) and in `counts.json`. (TFX's own ExampleGen reads one span per execution and
leaves windows to Resolver nodes, which open-source Kubeflow Pipelines does not run.)
"""

from __future__ import annotations

import collections
import gzip
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io import fileio
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact as artifact_lib
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.types import system_artifacts

from components.records import RecordError, parse_line, quarantine_entry
from pipeline.config import PipelineConfig, span_specs

PIPELINE_CONFIG_KEY = 'pipeline_config'
SPAN_PATTERN_KEY = 'span_pattern'
WINDOW_SPANS_KEY = 'window_spans'
QUARANTINE_KEY = 'quarantine'
COUNTS_FILE = 'counts.json'
RECORDS_PREFIX = 'records'
_QUARANTINE_URI = '_quarantine_uri'
_INGESTED = '__ingested__'


class QuarantinedRecords(artifact_lib.Artifact):
  """Log lines that could not become examples: JSON lines of reason, file, line number, raw."""
  TYPE_NAME = 'mtl.QuarantinedRecords'  # KFP v2 wants <namespace>.<Name> for custom types
  TYPE_ANNOTATION = system_artifacts.Dataset


class LogExampleGenSpec(component_spec.ComponentSpec):
  """FileBasedExampleGen's spec plus the pipeline config and a quarantine output."""
  PARAMETERS = dict(
      standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
      **{PIPELINE_CONFIG_KEY: component_spec.ExecutionParameter(type=str),
         SPAN_PATTERN_KEY: component_spec.ExecutionParameter(type=str),
         WINDOW_SPANS_KEY: component_spec.ExecutionParameter(type=int)})
  INPUTS = {}
  OUTPUTS = {
      standard_component_specs.EXAMPLES_KEY:
          component_spec.ChannelParameter(type=standard_artifacts.Examples),
      QUARANTINE_KEY: component_spec.ChannelParameter(type=QuarantinedRecords),
  }


def _read_lines(readable_file: fileio.ReadableFile) -> Iterable[Tuple[str, int, bytes]]:
  """Yields (file, line number, raw line); a file that breaks mid-way yields an error marker."""
  path = readable_file.metadata.path
  line_number = 0
  try:
    with readable_file.open() as f:  # decompresses .gz by extension
      while True:
        line = f.readline()
        if not line:
          break
        line_number += 1
        if line.strip():
          yield path, line_number, line
  except Exception as e:  # pylint: disable=broad-except
    # A truncated or corrupt file: what was read is kept; the break itself is quarantined.
    yield path, line_number + 1, RecordError('unreadable_file', f'{type(e).__name__}: {e}')


class _ParseLine(beam.DoFn):
  """Converts lines to examples; rejected lines go to the quarantine tagged output."""

  def __init__(self, config_json: str):
    self._config_json = config_json
    self._config: Optional[PipelineConfig] = None

  def setup(self):
    self._config = PipelineConfig.from_json(self._config_json)

  def process(self, element: Tuple[str, int, Any]):
    path, line_number, line = element
    if isinstance(line, RecordError):
      yield beam.pvalue.TaggedOutput(QUARANTINE_KEY,
                                     quarantine_entry(b'', path, line_number, line))
      return
    try:
      yield parse_line(line, self._config)
    except RecordError as e:
      yield beam.pvalue.TaggedOutput(QUARANTINE_KEY, quarantine_entry(line, path, line_number, e))


def window_patterns(span_pattern: str, span: int, window_spans: int) -> List[Tuple[int, str]]:
  """[(span, file pattern)] for the window ending at `span`, oldest first.

  Without a span or date spec in the pattern there is no window: the pattern itself, span 0.
  """
  is_span, is_date = span_specs(span_pattern)
  if not (is_span or is_date):
    return [(0, span_pattern)]
  first = max(0, span - max(1, window_spans) + 1)
  return [(s, example_gen_utils.get_pattern_for_span_version(
      span_pattern, is_span, is_date, False, s, None)) for s in range(first, span + 1)]


def _spans_of(exec_properties: Dict[str, Any]) -> List[Tuple[int, str]]:
  return window_patterns(exec_properties[SPAN_PATTERN_KEY],
                         int(exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) or 0),
                         int(exec_properties.get(WINDOW_SPANS_KEY) or 1))


def _counts_to_json(counts: Iterable[Tuple[str, int]]) -> str:
  counts = dict(counts)
  ingested = counts.pop(_INGESTED, 0)
  return json.dumps({'num_ingested': ingested,
                     'num_quarantined': sum(counts.values()),
                     'reasons': dict(sorted(counts.items()))}, sort_keys=True)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _LogsToExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  windowed = _spans_of(exec_properties)
  # The latest span's pattern is the one the driver resolved (it must match files); earlier
  # days of the window may be missing.
  patterns = ([os.path.join(input_base, split_pattern)] if len(windowed) == 1 else
              [os.path.join(input_base, pattern) for _, pattern in windowed])
  quarantine_uri = exec_properties[_QUARANTINE_URI]
  parsed = (
      pipeline
      | 'Patterns' >> beam.Create(patterns)
      | 'MatchFiles' >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
      | 'ReadMatches' >> fileio.ReadMatches()
      | 'ReadLines' >> beam.FlatMap(_read_lines)
      # Files are read whole by one worker each; spread the lines before the parsing work.
      | 'Spread' >> beam.Reshuffle()
      | 'Parse' >> beam.ParDo(_ParseLine(exec_properties[PIPELINE_CONFIG_KEY])).with_outputs(
          QUARANTINE_KEY, main='examples'))
  quarantined = parsed[QUARANTINE_KEY]
  _ = (quarantined
       | 'QuarantineToJson' >> beam.Map(json.dumps, sort_keys=True)
       | 'WriteQuarantine' >> beam.io.WriteToText(
           os.path.join(quarantine_uri, RECORDS_PREFIX), file_name_suffix='.jsonl.gz'))
  _ = ((parsed.examples | 'IngestedKey' >> beam.Map(lambda _: _INGESTED),
        quarantined | 'ReasonKey' >> beam.Map(lambda q: q['reason']))
       | 'AllKeys' >> beam.Flatten()
       | 'CountByKey' >> beam.combiners.Count.PerElement()
       | 'CountsToList' >> beam.combiners.ToList()
       | 'CountsToJson' >> beam.Map(_counts_to_json)
       | 'WriteCounts' >> beam.io.WriteToText(os.path.join(quarantine_uri, COUNTS_FILE),
                                              shard_name_template=''))
  return parsed.examples


def read_counts(quarantine_uri: str) -> Dict[str, Any]:
  """The ingestion counts written by a LogExampleGen run."""
  with tf.io.gfile.GFile(os.path.join(quarantine_uri, COUNTS_FILE)) as f:
    text = f.read().strip()
  # An input with no lines at all makes the counting combiner emit an empty list.
  return json.loads(text) if text else json.loads(_counts_to_json([]))


def read_quarantined(quarantine_uri: str) -> List[Dict[str, Any]]:
  """All quarantined records (for inspection and tests)."""
  records = []
  for path in sorted(tf.io.gfile.glob(os.path.join(quarantine_uri, RECORDS_PREFIX + '*'))):
    with tf.io.gfile.GFile(path, 'rb') as raw, gzip.GzipFile(fileobj=raw) as f:
      records.extend(json.loads(line) for line in f if line.strip())
  return records


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """ExampleGen executor for JSON-lines logs with a quarantine output."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _LogsToExamples

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    quarantine = output_dict[QUARANTINE_KEY][0]
    exec_properties = dict(exec_properties, **{_QUARANTINE_URI: quarantine.uri})
    super().Do(input_dict, {standard_component_specs.EXAMPLES_KEY:
                            output_dict[standard_component_specs.EXAMPLES_KEY]}, exec_properties)

    counts = read_counts(quarantine.uri)
    quarantine.set_int_custom_property('num_ingested', counts['num_ingested'])
    quarantine.set_int_custom_property('num_quarantined', counts['num_quarantined'])
    quarantine.set_string_custom_property('reasons', json.dumps(counts['reasons']))
    spans = [span for span, _ in _spans_of(exec_properties)]
    quarantine.set_string_custom_property('spans', json.dumps(spans))
    with tf.io.gfile.GFile(os.path.join(quarantine.uri, COUNTS_FILE), 'w') as f:
      f.write(json.dumps(dict(counts, spans=spans), sort_keys=True))

    config = PipelineConfig.from_json(exec_properties[PIPELINE_CONFIG_KEY])
    total = counts['num_ingested'] + counts['num_quarantined']
    if total == 0:
      raise RuntimeError(
          f'No log records found under {exec_properties[standard_component_specs.INPUT_BASE_KEY]}'
          ' for the configured pattern: nothing to train on.')
    rejected = counts['num_quarantined'] / total
    if rejected > config.data.max_rejected_fraction:
      top = collections.Counter(counts['reasons']).most_common(3)
      raise RuntimeError(
          f'{counts["num_quarantined"]} of {total} log records ({rejected:.2%}) were rejected, '
          f'above data.max_rejected_fraction={config.data.max_rejected_fraction:.2%}. '
          f'Top reasons: {", ".join(f"{r} ({n})" for r, n in top)}. '
          f'Quarantined records: {_preserve(quarantine.uri)}')


def _preserve(quarantine_uri: str) -> str:
  """Copies the quarantine out of the artifact directory, which TFX deletes when the
  execution fails: `<node dir>/quarantine/<id>` -> `<node dir>/rejected/<id>`."""
  uri = quarantine_uri.rstrip('/')
  target = os.path.join(os.path.dirname(os.path.dirname(uri)), 'rejected', os.path.basename(uri))
  tf.io.gfile.makedirs(target)
  for name in tf.io.gfile.listdir(quarantine_uri):
    tf.io.gfile.copy(os.path.join(quarantine_uri, name), os.path.join(target, name),
                     overwrite=True)
  return target


class LogExampleGen(FileBasedExampleGen):
  """Ingests JSON-lines impression logs by the pipeline config; see the module docstring."""

  SPEC_CLASS = LogExampleGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

  def __init__(self, input_base: str, config: PipelineConfig,
               file_pattern: Optional[str] = None,
               range_config=None):
    """Args:
      input_base: directory holding the logs.
      config: the pipeline config (features, labels, split key, eval fraction).
      file_pattern: glob relative to input_base; defaults to `config.data.file_pattern`.
      range_config: optional `range_config_pb2.RangeConfig` for {SPAN} patterns.
    """
    file_pattern = file_pattern or config.data.file_pattern
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name='logs', pattern=file_pattern)])
    eval_buckets = max(1, round(config.data.eval_fraction * 100))
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name='train', hash_buckets=100 - eval_buckets),
                example_gen_pb2.SplitConfig.Split(name='eval', hash_buckets=eval_buckets)],
        partition_feature_name=config.data.split_key))
    spec = LogExampleGenSpec(
        input_base=input_base,
        input_config=input_config,
        output_config=output_config,
        custom_config=None,
        range_config=range_config,
        output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
        output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        pipeline_config=config.data_view().to_json(),
        span_pattern=file_pattern,
        window_spans=config.data.window_spans,
        examples=types.Channel(type=standard_artifacts.Examples),
        quarantine=types.Channel(type=QuarantinedRecords))
    # Skip FileBasedExampleGen.__init__ (it builds its own spec); keep its class for the
    # driver and for orchestrators that special-case file-based ExampleGens.
    super(FileBasedExampleGen, self).__init__(spec=spec)  # pylint: disable=bad-super-call

