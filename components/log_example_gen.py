"""LogExampleGen: JSON-lines impression logs (plain or .gz) -> tf.Examples, bad lines quarantined.

A FileBasedExampleGen, so TFX's file driver (input fingerprints, {SPAN}/{YYYY}-{MM}-{DD}
patterns, range configs) and the Kubeflow V2 ExampleGen launcher apply unchanged. What it adds:

- each line is converted by `components.records.parse_line` against the pipeline config;
- a line that cannot be converted goes, with its file, line number and reason, to the
  `quarantine` output (JSON lines), never dropped silently;
- exact duplicate lines in the window (byte for byte, ignoring the line ending): the one with
  the smallest (file, line number) is ingested, every other copy is quarantined as `duplicate`.
  The files are read twice: first for a 128-bit fingerprint of each line (grouped through
  bucket files, `components/spill.py`; the lines seen more than once, with the copy to keep,
  become a side input), then to parse line by line, so no stage holds the window's lines in
  memory;
- each split is written in a random order that the same log reproduces on every run (a
  shuffle through bucket files keyed by a hash of each serialized example, `spill.Shuffle`,
  in place of TFX's WriteSplit, whose Reshuffle the local DirectRunner holds whole in memory),
  as gzip TFRecord shards of at most about EXAMPLES_BYTES_PER_SHARD bytes of examples
  (`Split-<name>/data_tfrecord-<shard>-of-<shards>.gz`, as TFX's ExampleGen names them);
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
  top reasons and the quarantine location, before anything trains on the data;
- each split's example count is kept (`examples_by_split` in `counts.json`); a split left
  empty (every record quarantined, or a split key with too few values for the eval share)
  fails the component, naming the split, the counts and the likely cause;
- per task, the examples of each split in its space (`task_rows_by_split`); a task whose space
  is empty in a split fails the component, naming the task and its space.

Train/eval are split by a hash of the config's split key (`partition_feature_name`), so a user
is never in both splits.

Daily partitions: with `{SPAN}` or `{YYYY}-{MM}-{DD}` in the file pattern, the latest span is
resolved as TFX's ExampleGen driver does (span, version, input fingerprint, and the pattern
with the span filled in). Locally and on Vertex AI Pipelines the driver runs before the
executor; open-source Kubeflow Pipelines runs no driver (TFX compiles it as the container's
`lifecycle.preCacheCheck` hook, which that backend never runs), so when the execution
properties hold no span the executor resolves it itself, with TFX's own input processor
(`resolve_input`), and records it on the examples artifact as the driver would. The executor
then reads that span and the `data.window_spans - 1` spans before it (missing days are
allowed), so each scheduled run trains on a rolling window of the most recent days. The spans
read are recorded on the quarantine artifact (`spans`) and in `counts.json`. (TFX's own
ExampleGen reads one span per execution and leaves windows to Resolver nodes, which open-source
Kubeflow Pipelines does not run.)
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import math
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io import iobase
from apache_beam.io import tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import input_processor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.proto import range_config_pb2
from tfx.types import artifact_utils
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components import spill
from components.artifacts import QuarantinedRecords
from components.records import (RecordError, known_fields, parse_line_with_unknown_fields,
                                quarantine_entry)
from pipeline.config import SPLIT_BUCKETS, PipelineConfig, span_specs

PIPELINE_CONFIG_KEY = 'pipeline_config'
SPAN_PATTERN_KEY = 'span_pattern'
WINDOW_SPANS_KEY = 'window_spans'
QUARANTINE_KEY = 'quarantine'
COUNTS_FILE = 'counts.json'
RECORDS_PREFIX = 'records'
_QUARANTINE_URI = '_quarantine_uri'
_SPILL_URI = '_spill_uri'
_NUM_BUCKETS = '_num_buckets'
# Bucket files of the two window-wide groupings (components/spill.py), inside the examples
# artifact (outside its Split-* directories), deleted when the executor ends.
SPILL_DIR = '_spill'
# About this much log text (uncompressed) per spill bucket: a bucket of examples is then about
# 35 MB in memory (log lines of ~260 bytes, serialized examples of ~260).
SPILL_BYTES_PER_BUCKET = 32 << 20
# JSON lines shrink about 10-15x under gzip; a rough figure is enough for the bucket count.
COMPRESSION_RATIO_ESTIMATE = 10
# Each split is written as gzip TFRecord shards of at most about this many bytes of serialized
# examples. Beam's reader (StatisticsGen, Transform, Evaluator) decompresses 16 MB of a gzip
# file at a time: a split in one file of 25 MB (1M rows) became ~270 MB in memory at once.
EXAMPLES_BYTES_PER_SHARD = 32 << 20
_FILES_KEY = 'files'
_UNKNOWN_KEY = 'unknown_fields'
DUPLICATE = 'duplicate'
UNREADABLE_FILE = 'unreadable_file'
# counts.json lists at most this many unknown field names (the most frequent) and empty files.
MAX_LISTED = 100
# Distinct split-key values counted per split, at most (enough to explain an empty split).
SPLIT_KEYS_COUNTED = 10
_SPLIT_COUNTS_DIR = 'split_counts'
_MAX_FIELD_NAME_CHARS = 200


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


_UTF8_BOM = b'\xef\xbb\xbf'


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
    self.bom = False  # the file started with a UTF-8 byte-order mark (stripped)
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
          if self.line_number == 1 and line.startswith(_UTF8_BOM):
            line = line[len(_UTF8_BOM):]  # some Windows tools write one; it is no record
            self.bom = True
          if line.strip():
            self.records += 1
            yield self.line_number, line
          else:
            self.blank += 1
      self.error = stream.error
    except Exception as e:  # pylint: disable=broad-except  # e.g. the file cannot be opened
      self.error = e


_FINGERPRINT_BYTES = 16


def _fingerprint(line: bytes) -> bytes:
  """128-bit digest of a line without its line ending (lines equal byte for byte match)."""
  return hashlib.blake2b(line.rstrip(b'\r\n'), digest_size=_FINGERPRINT_BYTES).digest()


class _FingerprintLines(beam.DoFn):
  """First pass over a file: for each non-blank line, (bucket, fingerprint + line number +
  file) for `spill.GroupInBuckets` (the bucket is taken from the fingerprint, so all copies of a
  line meet in one bucket); plus, tagged `files`, one (span, file, non-blank lines, blank lines,
  unreadable, byte-order mark) summary per file, and, tagged `quarantine`, the break of a file
  that breaks mid-way, as `unreadable_file` with the start of the broken line as its raw text.
  """

  def __init__(self, num_buckets: int):
    self._num_buckets = num_buckets

  def process(self, span_and_file: Tuple[int, Any]):
    span, metadata = span_and_file
    lines = _FileLines(metadata)
    path = lines.path.encode('utf-8')
    for line_number, line in lines:
      fingerprint = _fingerprint(line)
      yield (int.from_bytes(fingerprint[:8], 'little') % self._num_buckets,
             fingerprint + line_number.to_bytes(8, 'little') + path)
    if lines.error is not None:
      yield beam.pvalue.TaggedOutput(QUARANTINE_KEY, quarantine_entry(
          lines.partial, lines.path, lines.line_number + 1,
          RecordError(UNREADABLE_FILE, f'{type(lines.error).__name__}: {lines.error}')))
    yield beam.pvalue.TaggedOutput(_FILES_KEY, (span, lines.path, lines.records, lines.blank,
                                                lines.error is not None, lines.bom))


def _earlier(a: Optional[Tuple[str, int]], b: Tuple[str, int]) -> Tuple[str, int]:
  """The smaller of two (file, line number) positions; None is no position."""
  return b if a is None else min(a, b)


def _repeated(bucket_and_files: Tuple[int, Iterable[str]]):
  """(fingerprint, (file, line number) of the copy kept) for each line of one fingerprint
  bucket seen more than once. Two reads of the bucket: count, then find the first copies of
  the repeated lines only, so memory holds one count per line of the bucket."""
  files = list(bucket_and_files[1])
  counts = collections.Counter(
      record[:_FINGERPRINT_BYTES] for record in spill.read_bucket(files))
  repeated = {fingerprint for fingerprint, n in counts.items() if n > 1}
  del counts
  if not repeated:
    return
  first: Dict[bytes, Tuple[str, int]] = {}
  for record in spill.read_bucket(files):
    fingerprint = record[:_FINGERPRINT_BYTES]
    if fingerprint in repeated:
      position = (record[_FINGERPRINT_BYTES + 8:].decode('utf-8'),
                  int.from_bytes(record[_FINGERPRINT_BYTES:_FINGERPRINT_BYTES + 8], 'little'))
      first[fingerprint] = _earlier(first.get(fingerprint), position)
  yield from first.items()


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


def _file_counts(summary: Tuple[int, str, int, int, bool, bool]):
  span, path, records, blank, unreadable, bom = summary
  yield ('files', ''), 1
  if bom:
    yield ('files_with_bom', ''), 1
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


def _window_file_patterns(exec_properties: Dict[str, Any],
                          split_pattern: str) -> List[Tuple[int, str]]:
  """[(span, absolute file pattern)] of the files this execution reads."""
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  windowed = _spans_of(exec_properties)
  # The latest span's pattern is the one the driver resolved (it must match files); earlier
  # days of the window may be missing.
  if len(windowed) == 1:
    return [(windowed[0][0], os.path.join(input_base, split_pattern))]
  return [(span, os.path.join(input_base, pattern)) for span, pattern in windowed]


def _estimated_input_bytes(exec_properties: Dict[str, Any]) -> int:
  """The window's size, compressed files counted at COMPRESSION_RATIO_ESTIMATE times theirs
  (a rough figure is enough: it only sets the number of spill buckets)."""
  input_config = example_gen_pb2.Input()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                            input_config)
  total = 0
  for _, pattern in _window_file_patterns(exec_properties, input_config.splits[0].pattern):
    for metadata in FileSystems.match([pattern])[0].metadata_list:
      compressed = (CompressionTypes.detect_compression_type(metadata.path)
                    != CompressionTypes.UNCOMPRESSED)
      total += metadata.size_in_bytes * (COMPRESSION_RATIO_ESTIMATE if compressed else 1)
  return total


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
      'num_files_with_bom': by_kind['files_with_bom'].get('', 0),
      'lines_by_span': {span: n for span, n in sorted(by_kind['lines_by_span'].items(),
                                                      key=lambda kv: int(kv[0]))},
  }, sort_keys=True)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _LogsToExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                    split_pattern: str) -> beam.pvalue.PCollection:
  quarantine_uri = exec_properties[_QUARANTINE_URI]
  files = (
      pipeline
      | 'Patterns' >> beam.Create(_window_file_patterns(exec_properties, split_pattern))
      | 'MatchFiles' >> beam.FlatMap(_match)
      | 'SpreadFiles' >> beam.Reshuffle())
  # Two passes over the files, so no stage holds the window's lines: the first finds the lines
  # seen more than once (by a 128-bit fingerprint, grouped through bucket files; only the
  # repeated ones are kept, with the copy to ingest), the second parses line by line and
  # quarantines the other copies.
  read = files | 'FingerprintLines' >> beam.ParDo(
      _FingerprintLines(exec_properties[_NUM_BUCKETS])).with_outputs(
          QUARANTINE_KEY, _FILES_KEY, main='fingerprints')
  repeated = (read.fingerprints
              | 'GroupByFingerprint' >> spill.GroupInBuckets(  # pylint: disable=no-value-for-parameter
                  os.path.join(exec_properties[_SPILL_URI], 'fingerprints'))
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
  # Each branch is summed where it is produced (a lifted combine: its partial sums are made in
  # the producing stage), and only the per-key sums are flattened: a Flatten of the per-record
  # keys themselves would be held whole in memory by the local DirectRunner between stages.
  sums = [branch | f'{label}Keys' >> keys | f'{label}Sum' >> beam.CombinePerKey(sum)
          for label, branch, keys in (
              ('Ingested', parsed.examples, beam.Map(lambda _: (('ingested', ''), 1))),
              ('Reasons', quarantined, beam.Map(lambda q: (('reason', q['reason']), 1))),
              ('UnknownFields', parsed[_UNKNOWN_KEY],
               beam.Map(lambda name: (('unknown_field', name), 1))),
              ('Files', read[_FILES_KEY], beam.FlatMap(_file_counts)))]
  _ = (sums
       | 'AllSums' >> beam.Flatten()
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


def resolve_input(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  """The execution properties with the latest span, its version, the input fingerprint and
  the resolved split pattern, computed as TFX's ExampleGen driver computes them
  (tfx/orchestration/kubeflow/v2/file_based_example_gen/driver.py), unless a driver already
  did (then `span` is set; on Vertex it arrives as a float, so it is made an int here).

  Raises RuntimeError naming the input base and the pattern when no file matches.
  """
  span_key = example_gen_utils.SPAN_PROPERTY_NAME
  version_key = example_gen_utils.VERSION_PROPERTY_NAME
  if exec_properties.get(span_key) is not None:
    version = exec_properties.get(version_key)
    return dict(exec_properties, **{
        span_key: int(exec_properties[span_key]),
        version_key: None if version is None else int(version)})
  input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
  input_config = example_gen_pb2.Input()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                            input_config)
  range_config = None
  if exec_properties.get(standard_component_specs.RANGE_CONFIG_KEY):
    range_config = range_config_pb2.RangeConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.RANGE_CONFIG_KEY],
                              range_config)
  processor = input_processor.FileBasedInputProcessor(input_base, input_config.splits,
                                                      range_config)
  try:
    span, version = processor.resolve_span_and_version()
  except ValueError as e:
    patterns = ', '.join(os.path.join(input_base, s.pattern) for s in input_config.splits)
    raise RuntimeError(f'No log partition matches {patterns}: {e}') from e
  fingerprint = processor.get_input_fingerprint(span, version)
  for split in input_config.splits:
    split.pattern = processor.get_pattern_for_span_version(split.pattern, span, version)
  logging.info('Resolved span %s, version %s of %s (no driver ran)', span, version, input_base)
  return dict(exec_properties, **{
      span_key: span, version_key: version,
      example_gen_utils.FINGERPRINT_PROPERTY_NAME: fingerprint,
      standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config)})


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """ExampleGen executor for JSON-lines logs with a quarantine output."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _LogsToExamples

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    exec_properties = resolve_input(exec_properties)
    quarantine = output_dict[QUARANTINE_KEY][0]
    examples = output_dict[standard_component_specs.EXAMPLES_KEY]
    example_gen_driver.update_output_artifact(
        exec_properties, artifact_utils.get_single_instance(examples).mlmd_artifact)
    spill_uri = os.path.join(artifact_utils.get_single_uri(examples), SPILL_DIR)
    exec_properties = dict(exec_properties, **{
        _QUARANTINE_URI: quarantine.uri,
        _SPILL_URI: spill_uri,
        _NUM_BUCKETS: spill.buckets_for(_estimated_input_bytes(exec_properties),
                                        SPILL_BYTES_PER_BUCKET)})
    config = PipelineConfig.from_json(exec_properties[PIPELINE_CONFIG_KEY])
    try:
      by_split = self._write_examples(examples, exec_properties, config)
    finally:
      if tf.io.gfile.exists(spill_uri):
        tf.io.gfile.rmtree(spill_uri)

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
    counts['examples_by_split'] = {name: split['count'] for name, split in by_split.items()}
    counts['task_rows_by_split'] = task_rows_by_split(by_split, config)
    quarantine.set_string_custom_property('examples_by_split',
                                          json.dumps(counts['examples_by_split']))
    with tf.io.gfile.GFile(os.path.join(quarantine.uri, COUNTS_FILE), 'w') as f:
      f.write(json.dumps(dict(counts, spans=spans), sort_keys=True))

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
    if counts['num_ingested'] == 0:
      top = collections.Counter(counts['reasons']).most_common(3)
      raise RuntimeError(
          f'All {total} log records were quarantined (top reasons: '
          f'{", ".join(f"{r} ({n})" for r, n in top)}), so the train and eval splits are empty '
          f'(data.max_rejected_fraction={config.data.max_rejected_fraction:.2%} let the '
          'ingestion pass). Nothing to train on; the run stops before StatisticsGen and '
          f'Transform. Quarantined records: {_preserve(quarantine.uri)}')
    message = (empty_split_message(by_split, config) or
               empty_space_message(by_split, counts['task_rows_by_split'], config))
    if message:
      raise RuntimeError(message)


  def _write_examples(self, examples: List[types.Artifact], exec_properties: Dict[str, Any],
                      config: PipelineConfig) -> Dict[str, Dict[str, Any]]:
    """BaseExampleGenExecutor.Do, but each split is put in random order by `spill.Shuffle`
    instead of TFX's WriteSplit, whose Reshuffle the local DirectRunner holds in memory whole
    (see components/spill.py). Same files: `Split-<name>/data_tfrecord-*.gz`.

    Returns {split: {'count': examples, 'keys': up to SPLIT_KEYS_COUNTED + 1 distinct values
    of the split key, sorted, 'task_rows': {task with a space or row weight: examples with a
    positive weight}}}."""
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                              input_config)
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                              output_config)
    artifact = artifact_utils.get_single_instance(examples)
    artifact.split_names = artifact_utils.encode_split_names(
        example_gen_utils.generate_output_split_names(input_config, output_config))
    share = {split.name: split.hash_buckets for split in output_config.split_config.splits}
    split_key = output_config.split_config.partition_feature_name
    counts_uri = os.path.join(exec_properties[_SPILL_URI], _SPLIT_COUNTS_DIR)
    weight_columns = {t.name: t.weight_column for t in config.tasks if t.weight_column}
    with self._make_beam_pipeline() as pipeline:
      for name, split in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
        # The split's share of the window's buckets.
        num_buckets = max(1, math.ceil(
            exec_properties[_NUM_BUCKETS] * share.get(name, 1) / sum(share.values() or [1])))
        # Deterministic serialization (feature map in key order): by default the protobuf
        # runtime writes map entries in an order that changes from process to process, and
        # the shuffle's order keys hash these bytes, so the same log gave the examples in a
        # different order, and a different trained model, on every run.
        _ = (split
             | f'Serialize[{name}]' >> beam.Map(
                 lambda example: example.SerializeToString(deterministic=True))
             | f'Shuffle[{name}]' >> spill.Shuffle(  # pylint: disable=no-value-for-parameter
                 os.path.join(exec_properties[_SPILL_URI], 'shuffle', name), num_buckets)
             | f'Write[{name}]' >> beam.io.Write(_ExamplesSink(
                 os.path.join(artifact_utils.get_split_uri(examples, name),
                              write_split.DEFAULT_TF_RECORD_FILE_NAME))))
        _ = (split
             | f'CountSplit[{name}]' >> beam.CombineGlobally(
                 _SplitCounter(split_key, SPLIT_KEYS_COUNTED + 1, weight_columns))
             | f'WriteSplitCounts[{name}]' >> beam.io.WriteToText(
                 os.path.join(counts_uri, name), shard_name_template=''))
    examples_utils.set_payload_format(
        artifact, exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY])
    examples_utils.set_file_format(artifact, write_split.to_file_format_str(
        exec_properties[standard_component_specs.OUTPUT_FILE_FORMAT_KEY]))
    by_split = {}
    for name in share:
      with tf.io.gfile.GFile(os.path.join(counts_uri, name)) as f:
        by_split[name] = json.loads(f.read())
    return by_split


class _SplitCounter(beam.CombineFn):
  """A split's example count, up to `limit` distinct values of the split key (sorted, as
  text): enough to tell a key with one value from one with many, and per task with a space or
  row weight (`weight_columns`: {task: column}) its examples with a positive weight. Past
  `limit` values an example costs one addition per weighted task."""

  def __init__(self, split_key: str, limit: int, weight_columns: Dict[str, str]):
    super().__init__()
    self._split_key = split_key
    self._limit = limit
    self._weight_columns = dict(weight_columns)

  def create_accumulator(self):
    return [0, set(), collections.Counter()]

  def add_input(self, accumulator, example: tf.train.Example):
    accumulator[0] += 1
    if len(accumulator[1]) < self._limit:
      accumulator[1].add(_feature_text(example, self._split_key))
    features = example.features.feature
    for task, column in self._weight_columns.items():
      if features[column].float_list.value[0] > 0:
        accumulator[2][task] += 1
    return accumulator

  def merge_accumulators(self, accumulators):
    count, keys, rows = 0, set(), collections.Counter()
    for n, more, more_rows in accumulators:
      count += n
      keys |= more
      rows.update(more_rows)
    return [count, set(sorted(keys)[:self._limit]), rows]

  def extract_output(self, accumulator) -> str:
    return json.dumps({'count': accumulator[0], 'keys': sorted(accumulator[1]),
                       'task_rows': {task: accumulator[2][task]
                                     for task in self._weight_columns}})


def _feature_text(example: tf.train.Example, name: str) -> str:
  """A feature's first value as text ('' when absent or empty)."""
  feature = example.features.feature.get(name)
  if feature is None:
    return ''
  if feature.bytes_list.value:
    return feature.bytes_list.value[0].decode('utf-8', errors='replace')
  if feature.int64_list.value:
    return str(feature.int64_list.value[0])
  return ''


def task_rows_by_split(by_split: Dict[str, Dict[str, Any]], config: PipelineConfig
                       ) -> Dict[str, Dict[str, int]]:
  """{task: {split: examples in the task's space}} (every example for a task without a space
  or row weight), from what `_write_examples` returns."""
  return {t.name: {name: (split['task_rows'][t.name] if t.weight_column else split['count'])
                   for name, split in by_split.items()} for t in config.tasks}


def empty_space_message(by_split: Dict[str, Dict[str, Any]], rows: Dict[str, Dict[str, int]],
                        config: PipelineConfig) -> Optional[str]:
  """Why a task cannot be trained or evaluated: its space has no example (with a positive
  weight) in a split (`rows`: `task_rows_by_split`); None when every task has some in every
  split."""
  for task in config.tasks:
    for split, count in rows[task.name].items():
      if count == 0 and by_split[split]['count']:
        return (f'Task {task.name!r} has no example in the {split} split: none of its '
                f'{by_split[split]["count"]} examples is in its space (where '
                f'{task.space_text}), so it can be '
                f'neither {"trained" if split == "train" else "evaluated"}. Check tasks[].space '
                'and tasks[].weight against the logs. The run stops before StatisticsGen and '
                'Transform.')
  return None


def empty_split_message(by_split: Dict[str, Dict[str, Any]],
                        config: PipelineConfig) -> Optional[str]:
  """Why a split is empty when the other is not, or None when no split is empty.

  `by_split` is what `_write_examples` returns. The likely causes: the split key takes too few
  values (the split hashes each value into SPLIT_BUCKETS buckets, so one value puts every
  record in one split), or an eval share too small for the number of values.
  """
  empty = [name for name, split in by_split.items() if split['count'] == 0]
  if not empty or len(empty) == len(by_split):
    return None
  name = empty[0]
  total = sum(split['count'] for split in by_split.values())
  holders = ', '.join(f'{other} {split["count"]}' for other, split in by_split.items()
                      if split['count'])
  keys = sorted({key for split in by_split.values() for key in split['keys']})
  key = config.data.split_key
  eval_buckets = round(config.data.eval_fraction * SPLIT_BUCKETS)
  share = eval_buckets if name == 'eval' else SPLIT_BUCKETS - eval_buckets
  if len(keys) <= SPLIT_KEYS_COUNTED:
    shown = ', '.join(repr(k) for k in keys[:3]) + (', ...' if len(keys) > 3 else '')
    values = f'only {len(keys)} distinct value(s) of {key!r} ({shown})'
    advice = ('set data.split_key to a field with many values (a user or request id), or '
              'log more of them')
  else:
    values = f'more than {SPLIT_KEYS_COUNTED} distinct values of {key!r}, none in its buckets'
    advice = 'log more distinct values, or set data.eval_fraction so each split has a share'
  return (f'The {name} split is empty: all {total} ingested examples went to the other split '
          f'({holders}). The split hashes data.split_key ({key!r}) into {SPLIT_BUCKETS} '
          f'buckets and data.eval_fraction={config.data.eval_fraction} gives {name} {share} of '
          f'them, but the window holds {values}. Likely cause: too few split-key values; '
          f'{advice}. The run stops before StatisticsGen and Transform.')


class _ExamplesSink(tfrecordio._TFRecordSink):  # pylint: disable=protected-access
  """WriteToTFRecord's sink (gzip, `<prefix>-<shard>-of-<shards>.gz`), starting a new shard
  after EXAMPLES_BYTES_PER_SHARD bytes (uncompressed; a FileBasedSink option that
  WriteToTFRecord does not expose), with shards numbered by what they hold.

  Shards are cut as records are written: no grouping. Beam numbers a file-based sink's shards
  in the order of their temporary files' names, which are random (one per bundle), so the same
  examples came out under other shard numbers on every run, and the Trainer (which orders the
  files by name before its seeded shuffle) trained on them in another order. Here each
  temporary file is renamed, when closed, to begin with a hash of its first record.
  """

  def __init__(self, file_path_prefix: str):
    super().__init__(file_path_prefix, coder=beam.coders.BytesCoder(), file_name_suffix='.gz',
                     num_shards=0, shard_name_template=None,
                     compression_type=CompressionTypes.AUTO)
    self.max_bytes_per_shard = EXAMPLES_BYTES_PER_SHARD

  def open_writer(self, init_result, uid):
    return _ContentNamedWriter(super().open_writer(init_result, uid))


class _ContentNamedWriter(iobase.Writer):
  """A sink writer whose temporary file, once closed, is named after its first record (its
  `spill.order_key`)."""

  def __init__(self, writer: iobase.Writer):
    self._writer = writer
    self._first: Optional[bytes] = None

  def write(self, value: bytes) -> None:
    if self._first is None:
      self._first = value
    self._writer.write(value)

  def at_capacity(self) -> bool:
    return self._writer.at_capacity()

  def close(self) -> str:
    path = self._writer.close()
    directory, name = FileSystems.split(path)
    key = spill.order_key(self._first or b'', salt=b'shard-name').hex()
    named = FileSystems.join(directory, f'{key}-{name}')
    FileSystems.rename([path], [named])
    return named


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
    eval_buckets = round(config.data.eval_fraction * SPLIT_BUCKETS)  # whole buckets (config)
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name='train',
                                                  hash_buckets=SPLIT_BUCKETS - eval_buckets),
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
        pipeline_config=config.ingestion_view().to_json(),
        span_pattern=file_pattern,
        window_spans=config.data.window_spans,
        examples=types.Channel(type=standard_artifacts.Examples),
        quarantine=types.Channel(type=QuarantinedRecords))
    # Skip FileBasedExampleGen.__init__ (it builds its own spec); keep its class for the
    # driver and for orchestrators that special-case file-based ExampleGens.
    super(FileBasedExampleGen, self).__init__(spec=spec)  # pylint: disable=bad-super-call

