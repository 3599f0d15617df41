"""One log line -> one tf.Example, or a RecordError whose reason names the field."""

import json

import pytest

from components.records import RecordError, parse_line, record_to_example

GOOD = {'impression_id': 'x', 'user_id': 'u1', 'user_segment': 's2', 'item_id': 'i9',
        'item_category': 'c01', 'item_price': 12.5, 'device': 'ios', 'hour': 7, 'position': 3,
        'click': 1, 'conversion': 0, 'dwell_seconds': 31.5}


def _line(**changes):
  record = dict(GOOD, **changes)
  return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def test_good_line_encodes_by_feature_type(sample_config_obj):
  example = parse_line(_line(), sample_config_obj)
  f = example.features.feature
  assert f['user_id'].bytes_list.value == [b'u1']
  assert f['hour'].bytes_list.value == [b'7']  # categorical integer -> its decimal string
  assert f['position'].float_list.value == [3.0]
  assert f['click'].int64_list.value == [1]
  assert f['dwell_seconds'].float_list.value == [31.5]
  assert 'impression_id' not in f  # fields the config does not name are ignored


def test_without_labels_for_serving(sample_config_obj):
  example = record_to_example(GOOD, sample_config_obj, with_labels=False)
  assert 'click' not in example.features.feature


@pytest.mark.parametrize('line, reason', [
    (b'{"user_id": ', 'malformed_json'),
    (b'[1, 2]', 'not_an_object'),
    (b'\xff\xfe{}', 'not_utf8'),
    (_line(click=...), 'missing_field:click'),
    (_line(user_id=None), 'missing_field:user_id'),
    (_line(click='yes'), 'bad_type:click'),
    (_line(click=2), 'label_out_of_range:click'),
    (_line(position='top'), 'bad_type:position'),
    (_line(device=['ios']), 'bad_type:device'),
])
def test_bad_lines_name_reason_and_field(sample_config_obj, line, reason):
  with pytest.raises(RecordError) as e:
    parse_line(line, sample_config_obj)
  assert e.value.reason == reason


def test_non_finite_numbers_are_rejected(sample_config_obj):
  line = _line().replace(b'12.5', b'NaN')
  with pytest.raises(RecordError) as e:
    parse_line(line, sample_config_obj)
  assert e.value.reason == 'non_finite:item_price'
