"""One log line -> one tf.Example, or a RecordError whose reason names the field."""

import json
import pickle

import pytest

from components.records import (RecordError, parse_line, parse_line_with_unknown_fields,
                                record_to_example, record_to_instance)
from pipeline.config import ConfigError, PipelineConfig, parse_config

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


def test_integral_float_categorical_is_its_integer(sample_config_obj):
  """Some writers emit 7 as 7.0; 7.5 is no category."""
  example = parse_line(_line(hour=7.0, item_id=12.0), sample_config_obj)
  assert example.features.feature['hour'].bytes_list.value == [b'7']
  assert example.features.feature['item_id'].bytes_list.value == [b'12']
  with pytest.raises(RecordError) as e:
    parse_line(_line(hour=7.5), sample_config_obj)
  assert e.value.reason == 'bad_type:hour' and 'got 7.5' in e.value.detail


def test_without_labels_for_serving(sample_config_obj):
  example = record_to_example(GOOD, sample_config_obj, with_labels=False)
  assert 'click' not in example.features.feature


def test_a_serving_request_leaves_a_missing_feature_to_the_model_default(sample_config_obj):
  record = {k: v for k, v in GOOD.items() if k not in ('item_price', 'device')}
  example = record_to_example(dict(record, hour=None), sample_config_obj, with_labels=False)
  assert not {'item_price', 'device', 'hour'} & set(example.features.feature)
  assert example.features.feature['position'].float_list.value == [3.0]
  with pytest.raises(RecordError) as e:  # ingestion still requires every feature
    record_to_example(record, sample_config_obj)
  assert e.value.reason == 'missing_field:device'  # the first in config order
  with pytest.raises(RecordError) as e:  # a value that is present is checked as ingestion does
    record_to_example(dict(record, position=float('nan')), sample_config_obj, with_labels=False)
  assert e.value.reason == 'non_finite:position'


def test_a_rest_instance_follows_ingestion_rules(sample_config_obj):
  instance = record_to_instance(dict(GOOD, hour=21, item_id=12.0, device=None),
                                sample_config_obj)
  assert instance == {'user_segment': 's2', 'item_id': '12',
                      'item_category': 'c01', 'device': '', 'hour': '21', 'position': 3.0,
                      'item_price': 12.5}
  for field, value, reason in (('item_price', float('inf'), 'non_finite:item_price'),
                               ('position', 'top', 'bad_type:position'),
                               ('hour', 7.5, 'bad_type:hour')):
    with pytest.raises(RecordError) as e:
      record_to_instance(dict(GOOD, **{field: value}), sample_config_obj)
    assert e.value.reason == reason


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


def _config_with(sample_config_obj, **data):
  return sample_config_obj.with_overrides(data=data) if data else sample_config_obj


def test_negative_dwell_is_out_of_range_by_the_sample_config(sample_config_obj):
  assert sample_config_obj.task('dwell').label_min == 0
  with pytest.raises(RecordError) as e:
    parse_line(_line(dwell_seconds=-0.5), sample_config_obj)
  assert e.value.reason == 'out_of_range:dwell_seconds'
  assert 'below label_min=0.0' in e.value.detail
  parse_line(_line(dwell_seconds=0), sample_config_obj)  # the bound itself is allowed


def test_numeric_feature_and_label_ranges_come_from_the_config(sample_config_obj):
  raw = sample_config_obj.to_dict()
  raw['features'] = [dict(f, min=1, max=10) if f['name'] == 'position' else f
                     for f in raw['features']]
  raw['tasks'] = [dict(t, label_max=600) if t['name'] == 'dwell' else t for t in raw['tasks']]
  config = parse_config(raw)
  for line, reason in [(_line(position=0), 'out_of_range:position'),
                       (_line(position=11), 'out_of_range:position'),
                       (_line(dwell_seconds=600.5), 'out_of_range:dwell_seconds')]:
    with pytest.raises(RecordError) as e:
      parse_line(line, config)
    assert e.value.reason == reason
  parse_line(_line(position=10, dwell_seconds=600), config)
  # Ingestion receives the data view: it must carry the label range.
  assert config.data_view().task('dwell').label_max == 600
  assert PipelineConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize('change, message', [
    (lambda raw: raw['tasks'][0].update(label_min=0),
     'tasks[0].label_min: only applies to regression tasks'),
    (lambda raw: raw['tasks'][2].update(label_min=5, label_max=1),
     'tasks[2].label_min: 5.0 is above label_max 1.0'),
    (lambda raw: raw['tasks'][2].update(label_max=float('inf')),
     'tasks[2].label_max: must be a finite number'),
    (lambda raw: raw['features'][0].update(min=0),
     'features[0].min: only applies to numeric features'),
    (lambda raw: raw['features'][5].update(min='zero'),
     "features[5].min: expected a number, got 'zero'"),
    (lambda raw: raw['data'].update(max_string_bytes=0), 'data.max_string_bytes: 0 must be >= 1'),
])
def test_range_and_length_keys_are_validated(sample_config_obj, change, message):
  raw = sample_config_obj.to_dict()
  change(raw)
  with pytest.raises(ConfigError) as e:
    parse_config(raw)
  assert message in str(e.value)


def test_string_length_limit_counts_utf8_bytes(sample_config_obj):
  config = _config_with(sample_config_obj, max_string_bytes=8)
  parse_line(_line(item_id='x' * 8), config)
  for line, reason in [(_line(item_id='x' * 9), 'string_too_long:item_id'),
                       (_line(device='\u00e9' * 5), 'string_too_long:device'),  # 10 bytes
                       (_line(user_id='u' * 9), 'string_too_long:user_id')]:   # the split key
    with pytest.raises(RecordError) as e:
      parse_line(line, config)
    assert e.value.reason == reason
  assert sample_config_obj.data.max_string_bytes == 1024


def test_unknown_fields_are_listed_not_rejected(sample_config_obj):
  example, unknown = parse_line_with_unknown_fields(
      _line(experiment='b', debug={'x': 1}), sample_config_obj)
  assert unknown == ['debug', 'experiment', 'impression_id']
  assert not set(unknown) & set(example.features.feature)


def test_record_error_survives_pickling():
  error = pickle.loads(pickle.dumps(RecordError('unreadable_file', 'EOFError: cut')))
  assert (error.reason, error.detail) == ('unreadable_file', 'EOFError: cut')
