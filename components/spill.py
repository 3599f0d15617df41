"""Grouping through bucket files, so a step that must see a whole window holds one bucket of it.

Beam's DirectRunner (local runs) keeps the data of every GroupByKey in memory until the group
is read; Dataflow and Flink spill their shuffles to disk. LogExampleGen groups the window's
records twice (to find repeated lines, and to put the examples in random order before writing
them), so on the local runner its memory grew with the log. Here each record goes to one of
`num_buckets` bucket files, written per bundle; only the files' names go through a GroupByKey;
each bucket is then read back on its own. Memory holds one bucket's records, and the number of
buckets grows with the input (`buckets_for`).

Bucket files are length-prefixed records (no compression: they are read once, soon after), on
any filesystem Beam knows (local, gs://). The caller owns the directory and deletes it when
the pipeline is done; a retried bundle's files are never read (only the names emitted by
finished bundles are).
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import uuid
from typing import Dict, Iterable, Iterator, List, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window
from apache_beam.utils import windowed_value

_LENGTH = struct.Struct('<I')
_ORDER_KEY_BYTES = 8
# Open bucket files per bundle are at most this many, whatever the input's size: beyond it
# buckets grow instead (a window that large belongs on Dataflow or Flink anyway).
MAX_BUCKETS = 128


def buckets_for(input_bytes: int, bytes_per_bucket: int) -> int:
  """Buckets so that each holds about `bytes_per_bucket` of input (at least 1, at most
  MAX_BUCKETS)."""
  return max(1, min(MAX_BUCKETS, math.ceil(input_bytes / max(1, bytes_per_bucket))))


class _WriteBuckets(beam.DoFn):
  """(bucket, record) -> one (bucket, file name) per bucket file this bundle wrote."""

  def __init__(self, directory: str):
    self._directory = directory
    self._files: Dict[int, Tuple[str, io.IOBase]] = {}

  def start_bundle(self):
    self._files = {}

  def process(self, bucket_and_record: Tuple[int, bytes]):
    bucket, record = bucket_and_record
    entry = self._files.get(bucket)
    if entry is None:
      path = FileSystems.join(self._directory, f'{bucket:05d}-{uuid.uuid4().hex}')
      entry = self._files[bucket] = (path, FileSystems.create(
          path, compression_type=CompressionTypes.UNCOMPRESSED))
    entry[1].write(_LENGTH.pack(len(record)))
    entry[1].write(record)

  def finish_bundle(self):
    files, self._files = self._files, {}
    for bucket, (path, f) in sorted(files.items()):
      f.close()
      yield windowed_value.WindowedValue((bucket, path), window.GlobalWindow().max_timestamp(),
                                         [window.GlobalWindow()])


@beam.ptransform_fn
def GroupInBuckets(records: beam.PCollection, directory: str) -> beam.PCollection:
  """(bucket, record bytes) -> (bucket, [bucket files]); read a bucket with `read_bucket`."""
  return (records
          | 'WriteBuckets' >> beam.ParDo(_WriteBuckets(directory))
          | 'GroupBucketFiles' >> beam.GroupByKey())


def read_bucket(paths: Iterable[str]) -> Iterator[bytes]:
  """The records of one bucket's files, streaming."""
  for path in sorted(paths):
    # Buffered readers on every filesystem (io.open locally, gcsio's on gs://).
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      while True:
        header = f.read(_LENGTH.size)
        if not header:
          break
        if len(header) < _LENGTH.size:
          raise IOError(f'{path}: bucket file ends inside a record header')
        (length,) = _LENGTH.unpack(header)
        record = f.read(length)
        if len(record) < length:
          raise IOError(f'{path}: bucket file ends inside a record')
        yield record


def order_key(record: bytes, salt: bytes) -> bytes:
  """A pseudo-random 64-bit key of the record (BLAKE2b keyed by `salt`): sorting by it is a
  shuffle that depends only on the records, not on the order they arrived in."""
  return hashlib.blake2b(record, digest_size=_ORDER_KEY_BYTES, key=salt).digest()


def _keyed_for_shuffle(record: bytes, num_buckets: int, salt: bytes) -> Tuple[int, bytes]:
  key = order_key(record, salt)
  return int.from_bytes(key, 'little') % num_buckets, key + record


def _shuffled_bucket(bucket_and_paths: Tuple[int, Iterable[str]]) -> Iterator[bytes]:
  keyed: List[bytes] = list(read_bucket(bucket_and_paths[1]))
  keyed.sort()  # by the order key first (the record breaks ties, so the order is total)
  for record in keyed:
    yield record[_ORDER_KEY_BYTES:]


@beam.ptransform_fn
def Shuffle(records: beam.PCollection, directory: str, num_buckets: int,
            salt: bytes = b'mtl-pipeline') -> beam.PCollection:
  """The records (bytes) in a pseudo-random order, holding one bucket in memory at a time.

  Each bucket is a random subset (by the order key) sorted by that key, so the output is a
  random permutation of the input; the same records give the same order within each bucket
  on every run and runner.
  """
  return (records
          | 'KeyForShuffle' >> beam.Map(_keyed_for_shuffle, num_buckets, salt)
          | 'GroupInBuckets' >> GroupInBuckets(directory)  # pylint: disable=no-value-for-parameter
          | 'ReadBucketsSorted' >> beam.FlatMap(_shuffled_bucket))
