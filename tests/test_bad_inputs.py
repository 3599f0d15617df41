"""The bad-input corpus (tests/data/bad_inputs/) through the real LogExampleGen.

One ingestion-only pipeline run (LogExampleGen under TFX's LocalDagRunner, with the sample
config) reads the whole corpus mixed with generated good logs; each test then checks one case
in the quarantine output, the counts and the ingested examples. docs/reliability.md lists what
each case does and which test here proves it. The stops (a window without records) are short
runs of their own.
"""

import collections
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from tfx.components.example_gen.utils import date_to_span_number

from components import log_example_gen
from components.log_example_gen import LogExampleGen, read_counts, read_quarantined
from conftest import REPO, run_components, sample_config
from pipeline.local_runner import PipelineRunError, run_local
from pipeline.run_summary import SUMMARY_FILE, build_summary, read_run, write_summary
from pipeline.sample_logs import generate_logs

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'bad_inputs')
LATEST = 'day=2026-11-04'       # every corpus file
EMPTY_DAY = 'day=2026-11-03'    # only the empty partition's file
REPLAY_DAY = 'day=2026-11-02'   # generated logs, plus a second copy of duplicates.jsonl
GOOD_ROWS = 300                 # generated on 2026-11-01 and 2026-11-02
SHARD_BYTES = 8192              # examples' bytes per output shard in this test


def _corpus_lines(name):
  """{line number: raw line} of a corpus file's non-blank lines."""
  with open(os.path.join(CORPUS, name), 'rb') as f:
    return {i: line.rstrip(b'\r\n') for i, line in enumerate(f, 1) if line.strip()}


def _user_of(raw: bytes) -> str:
  return json.loads(raw.decode('utf-8-sig', errors='replace'))['user_id']  # BOM: utf8_bom.jsonl


def _run_ingestion(config, output_dir):
  """Runs a pipeline of LogExampleGen alone, as run_local runs the whole one."""
  store = run_components(config, output_dir,
                         [LogExampleGen(input_base=config.data.input_base, config=config)])
  write_summary(build_summary(config, store), output_dir)
  return read_run(store, config.name)['nodes']['LogExampleGen']['outputs']


def _ingest_corpus(logs, run_dir):
  """The corpus run's ingestion. Tiny spill buckets and shards, so the duplicate search and the
  shuffle run over many bucket files and each split is written as many shards (a log this
  small would otherwise fit one). Far more than 1% of this input is bad on purpose; the stop
  itself is tested elsewhere."""
  config = sample_config(data={'input_base': str(logs), 'max_rejected_fraction': 0.5})
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(log_example_gen, 'SPILL_BYTES_PER_BUCKET', 2048)
    patch.setattr(log_example_gen, 'EXAMPLES_BYTES_PER_SHARD', SHARD_BYTES)
    return _run_ingestion(config, str(run_dir))


def _split_files(examples_uri):
  """{split: [(shard file name, [serialized examples in file order])]}."""
  return {split: [(os.path.basename(path),
                   [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type='GZIP')])
                  for path in sorted(glob.glob(os.path.join(examples_uri, split, '*.gz')))]
          for split in ('Split-train', 'Split-eval')}


def _ingested_users(split_files):
  """How many examples of each user the splits (`_split_files`) hold."""
  users = collections.Counter()
  for shards in split_files.values():
    for _, records in shards:
      for record in records:
        example = tf.train.Example.FromString(record)
        users[example.features.feature['user_id'].bytes_list.value[0].decode()] += 1
  return users


@pytest.fixture(scope='module')
def ingested(tmp_path_factory):
  root = tmp_path_factory.mktemp('bad_inputs')
  logs = root / 'logs'
  generate_logs(str(logs), rows=GOOD_ROWS, days=2, seed=21)
  shutil.copytree(CORPUS, logs / LATEST, ignore=shutil.ignore_patterns('empty_partition'))
  shutil.copytree(os.path.join(CORPUS, 'empty_partition'), logs / EMPTY_DAY)
  shutil.copy(os.path.join(CORPUS, 'duplicates.jsonl'), logs / REPLAY_DAY)
  outputs = _ingest_corpus(logs, root / 'run')
  examples_uri = outputs['examples'][0].uri
  assert sorted(os.listdir(examples_uri)) == ['Split-eval', 'Split-train'], 'spill files left'
  files = _split_files(examples_uri)
  quarantine_uri = outputs['quarantine'][0].uri
  by_file = collections.defaultdict(dict)
  quarantined = read_quarantined(quarantine_uri)
  for entry in quarantined:
    day, name = entry['file'].split(os.sep)[-2:]
    assert entry['line_number'] not in by_file[(day, name)], 'one entry per line'
    by_file[(day, name)][entry['line_number']] = entry
  with open(root / 'run' / SUMMARY_FILE) as f:
    summary = json.load(f)
  return {'counts': read_counts(quarantine_uri), 'quarantined': quarantined, 'by_file': by_file,
          'files': files, 'users': _ingested_users(files), 'summary': summary,
          'logs': logs, 'quarantine_uri': quarantine_uri, 'examples_uri': examples_uri}


def test_splits_are_written_in_shards_of_bounded_size(ingested):
  for split, shards in ingested['files'].items():
    assert len(shards) > 1, (split, shards)
    for shard, records in shards:
      # A shard closes once it holds SHARD_BYTES (records plus TFRecord framing).
      assert records and sum(len(r) + 16 for r in records[:-1]) < SHARD_BYTES, (split, shard)
  assert sum(ingested['users'].values()) == ingested['counts']['num_ingested']


def test_the_same_log_gives_the_same_files_in_every_run(ingested, tmp_path):
  """Ingestion again, in another process: the same shards, each holding the same examples in
  the same order, byte for byte. (The protobuf runtime writes a map's entries in an order that
  changes from process to process, and Beam numbers shards by random temporary names: either
  one made each run put the examples in another order, and train another model.)"""
  script = ('import sys; sys.path[:0] = [{tests!r}, {repo!r}]; import test_bad_inputs; '
            'outputs = test_bad_inputs._ingest_corpus({logs!r}, {run!r}); '
            'print(outputs["examples"][0].uri)').format(
                tests=os.path.dirname(os.path.abspath(__file__)), repo=REPO,
                logs=str(ingested['logs']), run=str(tmp_path / 'again'))
  completed = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                             timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  again = _split_files(completed.stdout.strip().splitlines()[-1])
  first = ingested['files']
  assert [name for name, _ in again['Split-train']] == [name for name, _ in first['Split-train']]
  assert len(first['Split-train']) > 1
  assert again == first


def _check_case(ingested, name, expected_reasons):
  """The file's lines named in expected_reasons are quarantined with that reason, their raw
  text, file and line number; every other line of it was ingested exactly once."""
  lines = _corpus_lines(name)
  entries = ingested['by_file'][(LATEST, name)]
  assert {n: e['reason'] for n, e in entries.items()} == expected_reasons
  for number, entry in entries.items():
    assert entry['raw'] == lines[number].decode('utf-8', errors='backslashreplace')
    assert entry['file'] == str(ingested['logs'] / LATEST / name)
    assert entry['detail']
  for number, raw in lines.items():
    if number not in expected_reasons:
      assert ingested['users'][_user_of(raw)] == 1, (name, number)


def test_malformed_json(ingested):
  _check_case(ingested, 'malformed_json.jsonl', {2: 'malformed_json', 3: 'malformed_json'})


def test_missing_label(ingested):
  # An absent label and a null one are both missing.
  _check_case(ingested, 'missing_label.jsonl',
              {1: 'missing_field:click', 2: 'missing_field:conversion'})


def test_label_of_the_wrong_type(ingested):
  _check_case(ingested, 'label_wrong_type.jsonl', {1: 'bad_type:click'})


def test_nan_and_infinite_numbers(ingested):
  _check_case(ingested, 'nan_and_infinite.jsonl', {
      1: 'non_finite:item_price',     # NaN
      2: 'non_finite:position',       # Infinity
      3: 'non_finite:dwell_seconds',  # -Infinity
      4: 'non_finite:item_price',     # 1e999, beyond float range
  })


def test_negative_dwell_time(ingested):
  # The sample config sets label_min: 0 on the dwell task; 0 itself is kept.
  _check_case(ingested, 'negative_dwell.jsonl', {1: 'out_of_range:dwell_seconds'})
  assert 'below label_min=0.0' in ingested['by_file'][(LATEST, 'negative_dwell.jsonl')][1][
      'detail']


def test_binary_label_outside_0_1(ingested):
  _check_case(ingested, 'binary_label_out_of_range.jsonl',
              {1: 'label_out_of_range:click', 2: 'label_out_of_range:conversion'})


def test_extremely_long_string(ingested):
  # Bytes, not characters, count (600 x 'é' is 1200 bytes); exactly 1024 bytes is kept, and
  # an unknown field is not checked (it is ignored).
  _check_case(ingested, 'long_string.jsonl',
              {1: 'string_too_long:item_id', 2: 'string_too_long:user_segment'})


def test_non_utf8_bytes(ingested):
  _check_case(ingested, 'non_utf8.jsonl', {2: 'not_utf8', 3: 'not_utf8'})
  # The raw bytes stay recoverable: undecodable bytes are kept as backslash escapes.
  assert '\\xff\\xfe' in ingested['by_file'][(LATEST, 'non_utf8.jsonl')][3]['raw']


def test_unknown_extra_fields_are_ignored_and_counted(ingested):
  _check_case(ingested, 'unknown_fields.jsonl', {})
  unknown = ingested['counts']['unknown_fields']
  assert unknown['experiment_arm'] == 2 and unknown['debug'] == 1
  assert unknown['debug_blob'] == 1
  # The generated logs carry two fields the config does not read, on every line.
  assert unknown['ts'] == GOOD_ROWS
  assert unknown['impression_id'] == ingested['counts']['num_ingested']
  assert not any('unknown' in reason for reason in ingested['counts']['reasons'])


def test_duplicate_records_keep_the_first_copy(ingested):
  # duplicates.jsonl is "a, b, a, x, x" (x a malformed line), once on the replay day and once
  # on the latest day: of a, b the copy with the smallest (file, line) is kept and every other
  # copy quarantined as a duplicate; each copy of x is quarantined for what is wrong with it.
  by_file = ingested['by_file']
  replay = by_file[(REPLAY_DAY, 'duplicates.jsonl')]
  latest = by_file[(LATEST, 'duplicates.jsonl')]
  assert {n: e['reason'] for n, e in replay.items()} == {
      3: 'duplicate', 4: 'malformed_json', 5: 'malformed_json'}
  assert {n: e['reason'] for n, e in latest.items()} == {
      1: 'duplicate', 2: 'duplicate', 3: 'duplicate', 4: 'malformed_json', 5: 'malformed_json'}
  kept = str(ingested['logs'] / REPLAY_DAY / 'duplicates.jsonl')
  assert replay[3]['detail'] == f'same line as {kept} line 1, which is kept'
  assert latest[2]['detail'] == f'same line as {kept} line 2, which is kept'
  lines = _corpus_lines('duplicates.jsonl')
  assert latest[3]['raw'].encode() == lines[3] == lines[1]
  assert ingested['users']['corpus-dup-1'] == 1 and ingested['users']['corpus-dup-2'] == 1
  assert ingested['counts']['reasons']['duplicate'] == 4


def test_truncated_gzip_keeps_the_lines_before_the_break(ingested):
  entries = ingested['by_file'][(LATEST, 'truncated.jsonl.gz')]
  assert len(entries) == 1
  (line_number, entry), = entries.items()
  assert entry['reason'] == 'unreadable_file'
  assert entry['detail'].startswith('EOFError: Compressed file ended')
  # The file held 40 lines before it was cut in half: the whole lines before the cut are
  # ingested; the line the cut runs through is the quarantined record, with what was left of it.
  read = sorted(u for u in ingested['users'] if u.startswith('corpus-truncated-'))
  assert 0 < len(read) < 40
  assert read == [f'corpus-truncated-{i}' for i in range(len(read))]
  assert line_number == len(read) + 1
  assert entry['raw'].startswith(f'{{"impression_id": "truncated-{len(read)}"')


def test_file_that_is_not_gzip_is_one_unreadable_record(ingested):
  # Plain JSON lines under a .gz name: nothing of it can be read as gzip.
  entries = ingested['by_file'][(LATEST, 'not_gzip.jsonl.gz')]
  assert {n: e['reason'] for n, e in entries.items()} == {1: 'unreadable_file'}
  assert entries[1]['detail'].startswith('BadGzipFile') and entries[1]['raw'] == ''
  assert ingested['users']['corpus-notgz-1'] == 0


def test_empty_file_is_listed_not_an_error(ingested):
  counts = ingested['counts']
  assert str(ingested['logs'] / LATEST / 'empty_file.jsonl') in counts['empty_files']
  assert not ingested['by_file'][(LATEST, 'empty_file.jsonl')]


def test_empty_partition_is_listed_not_an_error(ingested):
  counts = ingested['counts']
  assert str(ingested['logs'] / EMPTY_DAY / 'part-00000.jsonl.gz') in counts['empty_files']
  assert counts['num_empty_files'] == 2
  # The 7-day window ending on the latest day: three days missing and one empty have no records.
  latest = date_to_span_number(2026, 11, 4)
  assert counts['spans'] == list(range(latest - 6, latest + 1))
  assert counts['spans_without_records'] == [latest - 6, latest - 5, latest - 4, latest - 1]


def test_blank_lines_are_skipped_and_counted(ingested):
  _check_case(ingested, 'blank_lines.jsonl', {})
  assert ingested['counts']['num_blank_lines'] == 2


def test_utf8_byte_order_mark_is_stripped_and_counted(ingested):
  """A file written with a UTF-8 byte-order mark: its first line is a record like any other."""
  _check_case(ingested, 'utf8_bom.jsonl', {})
  assert ingested['users']['corpus-bom-1'] == 1 and ingested['users']['corpus-bom-2'] == 1
  assert ingested['counts']['num_files_with_bom'] == 1


def test_a_field_named_twice_in_a_record_is_quarantined(ingested):
  """JSON parsers keep one of the two values silently; which one differs between parsers.
  Text that looks like a repeated key inside a string value is not one."""
  _check_case(ingested, 'duplicate_key.jsonl', {1: 'duplicate_key:click'})
  assert ingested['users']['corpus-dupkey-2'] == 1


def test_every_line_is_ingested_or_quarantined(ingested):
  counts = ingested['counts']
  lines = GOOD_ROWS + len(_corpus_lines('duplicates.jsonl'))  # the replayed copy
  for name in os.listdir(CORPUS):
    if name.endswith('.jsonl'):
      lines += len(_corpus_lines(name))
  truncated_read = sum(1 for u in ingested['users'] if u.startswith('corpus-truncated-'))
  # Each line read is an example or a quarantined record; the truncated file adds the lines
  # read before its break and one record for the break, the file that is not gzip one record.
  assert counts['num_ingested'] + counts['num_quarantined'] == lines + truncated_read + 2
  assert counts['num_ingested'] == sum(ingested['users'].values())
  assert counts['num_quarantined'] == len(ingested['quarantined'])
  assert sum(counts['reasons'].values()) == counts['num_quarantined']
  assert counts['num_files'] == 2 + (len(os.listdir(CORPUS)) - 1) + 1 + 1


def test_run_summary_carries_the_ingestion_counts(ingested):
  ingestion = ingested['summary']['ingestion']
  assert ingestion == dict(ingested['counts'], quarantine_uri=ingested['quarantine_uri'])
  assert ingestion['reasons']['malformed_json'] == 2 + 4  # malformed_json.jsonl, duplicates
  assert ingestion['unknown_fields']['experiment_arm'] == 2
  # Counted by LogExampleGen as it writes the splits: what the shards hold.
  assert ingestion['examples_by_split'] == {
      split: sum(len(records) for _, records in ingested['files'][f'Split-{split}'])
      for split in ('train', 'eval')}


def test_window_without_records_stops_before_transform(tmp_path):
  """Only empty files and blank lines in the window: a clear stop in ingestion."""
  day = tmp_path / 'logs' / LATEST
  day.mkdir(parents=True)
  shutil.copy(os.path.join(CORPUS, 'empty_file.jsonl'), day)
  shutil.copy(os.path.join(CORPUS, 'empty_partition', 'part-00000.jsonl.gz'), day)
  with open(day / 'blank.jsonl', 'w') as f:
    f.write('\n  \n')
  config = sample_config(data={'input_base': str(tmp_path / 'logs')},
                         serving={'push_dir': str(tmp_path / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert 'No log records in the input window' in message, message
  assert '3 file(s) matched, all empty (2 blank line(s) in all)' in message, message
  assert 'Nothing to train on' in message
  ran = e.value.summary['components']
  assert ran['LogExampleGen']['state'] == 'FAILED'
  assert set(ran) <= {'LogExampleGen', 'ImportSchemaGen'}
  assert not (tmp_path / 'serving').exists()


def _stopped_run(tmp_path, **data):
  """A run_local over `tmp_path/logs` that must stop in LogExampleGen: (message, summary)."""
  config = sample_config(data=dict(input_base=str(tmp_path / 'logs'), **data),
                         serving={'push_dir': str(tmp_path / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  summary = e.value.summary
  assert summary['components']['LogExampleGen']['state'] == 'FAILED'
  assert set(summary['components']) <= {'LogExampleGen', 'ImportSchemaGen'}
  assert str(e.value) in summary['error']
  assert not (tmp_path / 'serving').exists()
  return str(e.value), summary


def test_split_key_with_one_value_stops_naming_the_empty_split(tmp_path):
  """Every record of one user: the user's hash bucket takes them all, the other split is
  empty. The stop names the split, the counts and the split key's single value."""
  generate_logs(str(tmp_path / 'generated'), rows=60, days=1, seed=5, compress=False)
  day = tmp_path / 'logs' / 'day=2026-11-01'
  day.mkdir(parents=True)
  with open(tmp_path / 'generated' / 'day=2026-11-01' / 'impressions.jsonl') as f, \
       open(day / 'impressions.jsonl', 'w') as out:
    for line in f:
      out.write(json.dumps(dict(json.loads(line), user_id='u-only')) + '\n')
  bucket = int(hashlib.sha256(b'u-only').hexdigest(), 16) % 100  # TFX's _PartitionFn
  full, empty = ('train', 'eval') if bucket < 80 else ('eval', 'train')
  message, summary = _stopped_run(tmp_path)
  assert f'The {empty} split is empty: all 60 ingested examples went to the other split ' \
         f'({full} 60)' in message, message
  assert "data.eval_fraction=0.2 gives" in message, message
  assert "only 1 distinct value(s) of 'user_id' ('u-only')" in message, message
  assert 'data.split_key' in message


def test_all_records_quarantined_stops_before_training(tmp_path):
  """max_rejected_fraction raised to 1: every record rejected is allowed through the rejection
  check, but nothing is left to train on, so ingestion stops (it used to reach the Trainer and
  fail in Keras with "Unexpected result of train_function (Empty logs)")."""
  day = tmp_path / 'logs' / LATEST
  day.mkdir(parents=True)
  for name in ('missing_label.jsonl', 'label_wrong_type.jsonl'):
    shutil.copy(os.path.join(CORPUS, name), day)
  message, _ = _stopped_run(tmp_path, max_rejected_fraction=1.0)
  rejected = len(_corpus_lines('missing_label.jsonl')) + len(_corpus_lines('label_wrong_type.jsonl'))
  assert f'All {rejected} log records were quarantined (top reasons: ' in message, message
  assert 'so the train and eval splits are empty' in message
  assert 'data.max_rejected_fraction=100.00%' in message
  quarantined = message.rsplit('Quarantined records: ', 1)[1].rstrip('.')
  assert len(read_quarantined(quarantined)) == rejected


def test_no_log_file_at_all_stops_before_ingestion(tmp_path):
  """Nothing matches the file pattern: TFX's ExampleGen driver stops the run, naming it."""
  (tmp_path / 'logs' / LATEST).mkdir(parents=True)  # a partition directory, but no file
  config = sample_config(data={'input_base': str(tmp_path / 'logs')},
                         serving={'push_dir': str(tmp_path / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert 'Cannot find matching for split logs based on day={YYYY}-{MM}-{DD}/*.jsonl*' in message
  assert set(e.value.summary['components']) <= {'LogExampleGen', 'ImportSchemaGen'}
  assert not (tmp_path / 'serving').exists()
