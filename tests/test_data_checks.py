"""Bad data stops the run early, with a message that names what is wrong (real pipelines)."""

import gzip
import json

import pytest

from conftest import sample_config
from pipeline.local_runner import PipelineRunError, run_local
from pipeline.sample_logs import generate_logs


def _append(path, lines):
  with gzip.open(path, 'ab') as f:
    f.write(b''.join(line + b'\n' for line in lines))


def test_schema_anomaly_stops_before_transform_and_names_the_feature(tmp_path):
  written = generate_logs(str(tmp_path / 'logs'), rows=400, days=1, seed=3)
  with gzip.open(written['log_files'][0], 'rt') as f:
    record = json.loads(f.readline())
  # A valid record for ingestion, but hour 30 is outside the curated schema's domain.
  _append(written['log_files'][0],
          [json.dumps(dict(record, hour=30, user_id=f'u9{i}')).encode() for i in range(5)])
  config = sample_config(data={'input_base': str(tmp_path / 'logs')},
                         serving={'push_dir': str(tmp_path / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert 'hour' in message and 'ENUM_TYPE_UNEXPECTED_STRING_VALUES' in message, message
  assert 'stops before Transform' in message
  ran = e.value.summary['components']
  assert ran['StrictExampleValidator']['state'] == 'FAILED'
  assert 'Transform' not in ran and 'Trainer' not in ran
  assert not (tmp_path / 'serving').exists()


def test_too_many_rejected_lines_stop_ingestion_naming_reasons(tmp_path):
  written = generate_logs(str(tmp_path / 'logs'), rows=300, days=1, seed=4)
  _append(written['log_files'][0], [b'{"truncated": ', b'not json at all'] * 5)
  config = sample_config(data={'input_base': str(tmp_path / 'logs'),
                               'max_rejected_fraction': 0.02},
                         serving={'push_dir': str(tmp_path / 'serving')})
  with pytest.raises(PipelineRunError) as e:
    run_local(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert '10 of 310 log records (3.23%) were rejected' in message, message
  assert 'malformed_json (10)' in message and 'Quarantined records: ' in message
  assert e.value.summary['components']['LogExampleGen']['state'] == 'FAILED'
  quarantine_dir = message.split('Quarantined records: ')[1].split()[0]
  from components.log_example_gen import read_quarantined  # pylint: disable=g-import-not-at-top
  kept = read_quarantined(quarantine_dir)
  assert len(kept) == 10 and {q['line_number'] for q in kept} == set(range(301, 311))
