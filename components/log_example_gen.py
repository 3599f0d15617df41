"""LogExampleGen: JSON-lines impression logs (plain or .gz) -> tf.Examples, bad lines quarantined.

A FileBasedExampleGen, so TFX's file driver (input fingerprints, {SPAN}/{YYYY}-{MM}-{DD}
patterns, range configs) and the Kubeflow V2 ExampleGen launcher apply unchanged. What it adds:

- each line is converted by `components.records.parse_line` against the pipeline config;
- a line that cannot be converted goes, with its file, line number and reason, to the
  `quarantine` output (JSON lines), never dropped silently;
- exact duplicate lines in the window (byte for byte, ignoring the line ending): the one with
  the smallest (file, line number) is ingested, every other copy is quarantined as `duplicate`.
  The files are read twice: first for a 128-bit fingerprint of each line (the lines seen more
  than once, with the copy to keep, become a side input), then to parse line by line, so no
  stage holds the window's lines in memory;
- a file that breaks mid-way (truncated or corrupt gzip): the lines before the break are
  ingested, the break is quarantined as `unreadable_file`;
- `quarantine/counts.json` counts ingested lines, rejected lines by reason, fields the config
  does not name (ignored, counted by name over ingested records), files read, empty files,
  blank lines skipped, and the window's spans that held no records; the main counts are
  custom properties of the quarantine artifact (`num_ingested`, `num_quarantined`, `reasons`),
  so ML Metadata answers "how much was rejected, and why";
- no records at all in the window (no lines, or only empty files and blank lines) fails the
  component with a message naming the input and the files found;
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
import hashlib
import io
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
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

from components.records import (RecordError, known_fields, parse_line_with_unknown_fields,
                                quarantine_entry)
from pipeline.config import PipelineConfig, span_specs

PIPELINE_CONFIG_KEY = 'pipeline_config'
SPAN_PATTERN_KEY = 'span_pattern'
WINDOW_SPANS_KEY = 'window_spans'
QUARANTINE_KEY = 'quarantine'
COUNTS_FILE = 'counts.json'
RECORDS_PREFIX = 'records'
_QUARANTINE_URI = '_quarantine_uri'
_FILES_KEY = 'files'
_UNKNOWN_KEY = 'unknown_fields'
DUPLICATE = 'duplicate'
UNREADABLE_FILE = 'unreadable_file'
# counts.json lists at most this many unknown field names (the most frequent) and empty files.
MAX_LISTED = 100
_MAX_FIELD_NAME_CHARS = 200


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


def _match(span_and_pattern: Tuple[int, str]) -> Iterable[Tuple[int, Any]]:
  """(span, file metadata) of each file matching the span's pattern; none is allowed."""
  span, pattern = span_and_pattern
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    yield span, metadata


class _UntilError(io.RawIOBase):
  """A readable stream that ends where the wrapped one fails, remembering the error, so the
  lines before a break are read normally and the break is seen as an early end."""

  def __init__(self, *streams):
    """Reads the first stream; closes them all (a decompressor and the file below it)."""
    super().__init__()
    self._streams = streams
    self._read = getattr(streams[0], 'read1', streams[0].read)
    self.error: Optional[Exception] = None

  def close(self):
    super().close()
    for stream in self._streams:
      stream.close()

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    if self.error is not None:
      return 0
    try:
      # read1: one read of the wrapped stream, so the data before a failing read is not lost
      data = self._read(len(buffer))
    except Exception as e:  # pylint: disable=broad-except
      self.error = e
      return 0
    buffer[:len(data)] = data
    return len(data)


def _open(metadata) -> _UntilError:
  """The file's decompressed bytes. Gzip goes through Python's gzip module, which (unlike
  Beam's decompressing reader) raises on a stream that ends before its end marker."""
  if metadata.path.endswith('.gz'):
    raw = FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED)
    return _UntilError(gzip.GzipFile(fileobj=raw, mode='rb'), raw)
  return _UntilError(fileio.ReadableFile(metadata).open())  # other compressions by extension


class _FileLines:
  """Iterates over the (line number, raw line) of a file's non-blank lines; afterwards says
  how many lines were blank and whether (and where) the file broke.

  A file that breaks mid-way (truncated or corrupt gzip, a read error): the complete lines
  before the break are read as usual; `error` is the break and `partial` the start of the line
  it cut.
  """

  def __init__(self, metadata):
    self._metadata = metadata
    self.path = metadata.path
    self.line_number = self.records = self.blank = 0
    self.partial = b''
    self.error: Optional[Exception] = None

  def __iter__(self) -> Iterator[Tuple[int, bytes]]:
    try:
      stream = _open(self._metadata)
      with io.BufferedReader(stream) as f:
        for line in iter(f.readline, b''):
          if stream.error is not None and not line.endswith(b'\n'):
            self.partial = line  # cut by the break: the start of a line, not a whole one
            break
          self.line_number += 1
          if line.strip():
            self.records += 1
            yield self.line_number, line
          else:
            self.blank += 1
      self.error = stream.error
    except Exception as e:  # pylint: disable=broad-except  # e.g. the file cannot be opened
      self.error = e


def _fingerprint(line: bytes) -> bytes:
  """128-bit digest of a line without its line ending (lines equal byte for byte match)."""
  return hashlib.blake2b(line.rstrip(b'\r\n'), digest_size=16).digest()


class _FingerprintLines(beam.DoFn):
  """First pass over a file: (fingerprint, (file, line number)) for each non-blank line, plus,
  tagged `files`, one (span, file, non-blank lines, blank lines, unreadable) summary per file,
  and, tagged `quarantine`, the break of a file that breaks mid-way, as `unreadable_file` with
  the start of the broken line as its raw text.
  """

  def process(self, span_and_file: Tuple[int, Any]):
    span, metadata = span_and_file
    lines = _FileLines(metadata)
    for line_number, line in lines:
      yield _fingerprint(line), (lines.path, line_number)
    if lines.error is not None:
      yield beam.pvalue.TaggedOutput(QUARANTINE_KEY, quarantine_entry(
          lines.partial, lines.path, lines.line_number + 1,
          RecordError(UNREADABLE_FILE, f'{type(lines.error).__name__}: {lines.error}')))
    yield beam.pvalue.TaggedOutput(_FILES_KEY, (span, lines.path, lines.records, lines.blank,
                                                lines.error is not None))


def _earlier(a: Optional[Tuple[str, int]], b: Optional[Tuple[str, int]]):
  """The smaller of two (file, line number) positions; None is no position."""
  if a is None or b is None:
    return b if a is None else a
  return min(tuple(a), tuple(b))


class _CountAndFirstCopy(beam.CombineFn):
  """(copies, smallest (file, line number)) of one fingerprint."""

  def create_accumulator(self):
    return 0, None

  def add_input(self, accumulator, position):
    return accumulator[0] + 1, _earlier(accumulator[1], position)

  def merge_accumulators(self, accumulators):
    count, first = 0, None
    for n, position in accumulators:
      count, first = count + n, _earlier(first, position)
    return count, first

  def extract_output(self, accumulator):
    return accumulator


def _repeated(fingerprint_and_copies):
  """(fingerprint, (file, line number) of the copy kept) for lines seen more than once."""
  fingerprint, (count, first) = fingerprint_and_copies
  if count > 1:
    yield fingerprint, tuple(first)


class _ParseLines(beam.DoFn):
  """Second pass over a file: converts each line, streaming.

  A line that converts becomes one example, unless it is a later copy of a repeated line (the
  side input `repeated` names the copy kept, the smallest (file, line number)): then it is
  quarantined as `duplicate`, naming the copy kept. A line that does not convert is
  quarantined at every copy with its own reason (a repeated bad line is reported as what is
  wrong with it, not as a duplicate). The names of fields the config does not name go, once
  per example, to the `unknown_fields` output. (The first pass already reported the files'
  breaks and counts.)
  """

  def __init__(self, config_json: str):
    self._config_json = config_json
    self._config: Optional[PipelineConfig] = None
    self._known = frozenset()

  def setup(self):
    self._config = PipelineConfig.from_json(self._config_json)
    self._known = known_fields(self._config)

  def process(self, span_and_file: Tuple[int, Any], repeated: Dict[bytes, Tuple[str, int]]):
    lines = _FileLines(span_and_file[1])
    for line_number, line in lines:
      try:
        example, unknown = parse_line_with_unknown_fields(line, self._config, self._known)
      except RecordError as e:
        yield beam.pvalue.TaggedOutput(QUARANTINE_KEY, quarantine_entry(
            line.rstrip(b'\r\n'), lines.path, line_number, e))
        continue
      if repeated:
        kept = repeated.get(_fingerprint(line))
        if kept is not None and kept != (lines.path, line_number):
          yield beam.pvalue.TaggedOutput(QUARANTINE_KEY, quarantine_entry(
              line.rstrip(b'\r\n'), lines.path, line_number,
              RecordError(DUPLICATE, f'same line as {kept[0]} line {kept[1]}, which is kept')))
          continue
      yield example
      for name in unknown:
        yield beam.pvalue.TaggedOutput(_UNKNOWN_KEY, name[:_MAX_FIELD_NAME_CHARS])


def _file_counts(summary: Tuple[int, str, int, int, bool]):
  span, path, records, blank, unreadable = summary
  yield ('files', ''), 1
  yield ('lines_by_span', str(span)), records
  if blank:
    yield ('blank_lines', ''), blank
  if not records and not unreadable:
    yield ('empty_file', path), 1


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


def _counts_to_json(counts: Iterable[Tuple[Tuple[str, str], int]]) -> str:
  """counts.json from ((kind, name), count) pairs; see the module docstring."""
  by_kind: Dict[str, Dict[str, int]] = collections.defaultdict(dict)
  for (kind, name), count in counts:
    by_kind[kind][name] = count
  reasons = by_kind['reason']
  unknown = collections.Counter(by_kind['unknown_field'])
  empty_files = sorted(by_kind['empty_file'])
  return json.dumps({
      'num_ingested': by_kind['ingested'].get('', 0),
      'num_quarantined': sum(reasons.values()),
      'reasons': dict(sorted(reasons.items())),
      'unknown_fields': dict(sorted(unknown.most_common(MAX_LISTED))),
      'num_unknown_field_names': len(unknown),
      'num_files': by_kind['files'].get('', 0),
      'num_empty_files': len(empty_files),
      'empty_files': empty_files[:MAX_LISTED],
      'num_blank_lines': by_kind['blank_lines'].get('', 0),
      'lines_by_span': {span: n for span, n in sorted(by_kind['lines_by_span'].items(),
                                                      key=lambda kv: int(kv[0]))},
  }, sort_keys=True)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _LogsToExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  windowed = _spans_of(exec_properties)
  # The latest span's pattern is the one the driver resolved (it must match files); earlier
  # days of the window may be missing.
  patterns = ([(windowed[0][0], os.path.join(input_base, split_pattern))]
              if len(windowed) == 1 else
              [(span, os.path.join(input_base, pattern)) for span, pattern in windowed])
  quarantine_uri = exec_properties[_QUARANTINE_URI]
  files = (
      pipeline
      | 'Patterns' >> beam.Create(patterns)
      | 'MatchFiles' >> beam.FlatMap(_match)
      | 'SpreadFiles' >> beam.Reshuffle())
  # Two passes over the files, so no stage holds the window's lines: the first finds the lines
  # seen more than once (by a 128-bit fingerprint; only the repeated ones are kept, with the
  # copy to ingest), the second parses line by line and quarantines the other copies.
  read = files | 'FingerprintLines' >> beam.ParDo(_FingerprintLines()).with_outputs(
      QUARANTINE_KEY, _FILES_KEY, main='fingerprints')
  repeated = (read.fingerprints
              | 'CountCopies' >> beam.CombinePerKey(_CountAndFirstCopy())
              | 'Repeated' >> beam.FlatMap(_repeated))
  parsed = files | 'ParseLines' >> beam.ParDo(
      _ParseLines(exec_properties[PIPELINE_CONFIG_KEY]),
      repeated=beam.pvalue.AsDict(repeated)).with_outputs(
          QUARANTINE_KEY, _UNKNOWN_KEY, main='examples')
  quarantined = ((read[QUARANTINE_KEY], parsed[QUARANTINE_KEY])
                 | 'AllQuarantined' >> beam.Flatten())
  _ = (quarantined
       | 'QuarantineToJson' >> beam.Map(json.dumps, sort_keys=True)
       | 'WriteQuarantine' >> beam.io.WriteToText(
           os.path.join(quarantine_uri, RECORDS_PREFIX), file_name_suffix='.jsonl.gz'))
  _ = ((parsed.examples | 'IngestedKey' >> beam.Map(lambda _: (('ingested', ''), 1)),
        quarantined | 'ReasonKey' >> beam.Map(lambda q: (('reason', q['reason']), 1)),
        parsed[_UNKNOWN_KEY] | 'UnknownFieldKey' >> beam.Map(
            lambda name: (('unknown_field', name), 1)),
        read[_FILES_KEY] | 'FileKeys' >> beam.FlatMap(_file_counts))
       | 'AllKeys' >> beam.Flatten()
       | 'SumByKey' >> beam.CombinePerKey(sum)
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
    # Spans of the window with no records: missing days, or days whose files are all empty.
    counts['spans_without_records'] = [
        span for span in spans if not counts['lines_by_span'].get(str(span))
    ] if any(span_specs(exec_properties[SPAN_PATTERN_KEY])) else []
    quarantine.set_int_custom_property('num_empty_files', counts['num_empty_files'])
    quarantine.set_string_custom_property('unknown_fields', json.dumps(counts['unknown_fields']))
    with tf.io.gfile.GFile(os.path.join(quarantine.uri, COUNTS_FILE), 'w') as f:
      f.write(json.dumps(dict(counts, spans=spans), sort_keys=True))

    config = PipelineConfig.from_json(exec_properties[PIPELINE_CONFIG_KEY])
    total = counts['num_ingested'] + counts['num_quarantined']
    if total == 0:
      input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
      window = (f'spans {spans[0]}..{spans[-1]} of ' if len(spans) > 1 else '')
      found = (f'{counts["num_files"]} file(s) matched, all empty '
               f'({counts["num_blank_lines"]} blank line(s) in all)'
               if counts['num_files'] else 'no file matched')
      raise RuntimeError(
          f'No log records in the input window ({window}{input_base}/'
          f'{exec_properties[SPAN_PATTERN_KEY]}): {found}. Nothing to train on; the run stops '
          'before StatisticsGen and Transform.')
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

