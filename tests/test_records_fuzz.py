"""Property: any line at all becomes either an example or a RecordError with a reason, and its
quarantine entry is serialisable; the parser never fails any other way."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.records import RecordError, parse_line, quarantine_entry
from conftest import sample_config

CONFIG = sample_config()
GOOD = {'user_id': 'u1', 'user_segment': 's2', 'item_id': 'i9', 'item_category': 'c01',
        'item_price': 12.5, 'device': 'ios', 'hour': 7, 'position': 3, 'click': 1,
        'conversion': 0, 'dwell_seconds': 31.5}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def _check(line):
  try:
    example = parse_line(line, CONFIG)
  except RecordError as e:
    assert e.reason and ':' not in e.reason or e.reason.split(':', 1)[1]
    entry = quarantine_entry(line, 'file.jsonl', 1, e)
    json.loads(json.dumps(entry))
    return
  assert set(example.features.feature) >= {f.name for f in CONFIG.features}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes(line):
  _check(line)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_random_json_values(value):
  _check(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), JSON_VALUES, max_size=len(GOOD)))
def test_good_records_with_random_field_values(changes):
  _check(json.dumps(dict(GOOD, **changes)).encode())


def test_pathological_lines():
  for line in [b'[' * 100000 + b']' * 100000,        # nesting deeper than the JSON parser's stack
               json.dumps(dict(GOOD, item_price=10 ** 400)).encode(),  # too large for a float
               json.dumps(dict(GOOD, device='\ud800')).encode(),       # a lone surrogate
               b'', b'\n', b'null', b'"text"']:
    _check(line)
