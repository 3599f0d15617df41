"""One impression-log record (a JSON line) to one `tf.train.Example`, by the config.

This is the single place that decides how a log field is encoded, so ingestion, tests and
clients building serving requests all produce the same examples:

- categorical feature -> bytes feature (a string, or an integer written as its decimal string;
  an integral float such as `3.0` counts as that integer, `3.5` is refused);
- numeric feature     -> float feature;
- binary label        -> int64 feature, 0 or 1 (JSON true/false accepted);
- regression label    -> float feature;
- a task with a space or a row weight -> also `<task>__weight`, a float feature: its example
  weight (the row weight inside the space, 0 outside; `_label_and_weight`);
- the split key (`data.split_key`), when it is not a feature -> bytes feature, like a
  categorical one: ingestion splits train/eval by it.

Serving requests are built by the same rules: `record_to_example(..., with_labels=False)` for
`serving_default`, `record_to_instance` for the REST signature `predict_instances`.

Value rules, from the config: a categorical value (or the split key) longer than
`data.max_string_bytes` in UTF-8 is rejected (`string_too_long:<field>`); a numeric feature
outside its `min`/`max`, or a regression label outside its task's `label_min`/`label_max`, is
rejected (`out_of_range:<field>`).

A record that cannot be converted raises `RecordError`, whose `reason` is a short code with
the field name (e.g. `missing_field:click`); ingestion counts rejected records by that reason.
A line naming a field twice (`{"click": 0, "click": 1}`) is rejected
(`duplicate_key:<field>`): JSON parsers keep one of the two silently, and which one differs
between them.
Fields the config does not name are ignored; `unknown_fields` lists them, so ingestion can
count them.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

import tensorflow as tf

from pipeline.config import PipelineConfig


class RecordError(ValueError):
  """A log record that cannot become an example."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f'{reason}: {detail}')
    self.reason = reason
    self.detail = detail

  def __reduce__(self):  # picklable (Beam may encode it), despite the two-argument __init__
    return RecordError, (self.reason, self.detail)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _categorical(name: str, value: Any, max_bytes: Optional[int] = None) -> bytes:
  if isinstance(value, str):
    text = value
  elif isinstance(value, int) and not isinstance(value, bool):
    text = str(value)
  elif isinstance(value, float) and value.is_integer():  # 3.0, as some writers emit 3
    text = str(int(value))
  else:
    raise RecordError(f'bad_type:{name}',
                      f'{name} must be a string or an integer, got {json.dumps(value)}')
  try:
    encoded = text.encode('utf-8')
  except UnicodeEncodeError as e:  # e.g. a lone surrogate escaped in the JSON ("\ud800")
    raise RecordError(f'bad_string:{name}', f'{name} is not valid Unicode: {e}') from None
  if max_bytes is not None and len(encoded) > max_bytes:
    raise RecordError(f'string_too_long:{name}',
                      f'{name} is {len(encoded)} bytes, above data.max_string_bytes={max_bytes}')
  return encoded


def _finite_float(name: str, value: Any) -> float:
  if not _is_number(value):
    raise RecordError(f'bad_type:{name}', f'{name} must be a number, got {json.dumps(value)}')
  try:
    value = float(value)
  except OverflowError:  # an integer beyond float range
    raise RecordError(f'non_finite:{name}', f'{name} is too large for a float') from None
  if not math.isfinite(value):
    raise RecordError(f'non_finite:{name}', f'{name} is {value}')
  return value


def _in_range(name: str, value: float, low: Optional[float], high: Optional[float],
              keys: Tuple[str, str]) -> float:
  """`value` if within [low, high] (either may be None: unbounded); `keys` name the bounds."""
  if low is not None and value < low:
    raise RecordError(f'out_of_range:{name}', f'{name} is {value}, below {keys[0]}={low}')
  if high is not None and value > high:
    raise RecordError(f'out_of_range:{name}', f'{name} is {value}, above {keys[1]}={high}')
  return value


def _binary_label(name: str, value: Any) -> int:
  if isinstance(value, bool):
    value = int(value)
  if not _is_number(value):
    raise RecordError(f'bad_type:{name}',
                      f'binary label {name} must be 0 or 1, got {json.dumps(value)}')
  if value not in (0, 1):
    raise RecordError(f'label_out_of_range:{name}',
                      f'binary label {name} must be 0 or 1, got {value}')
  return int(value)


def _feature_value(feature, value: Any, max_bytes: Optional[int]) -> Union[bytes, float]:
  """A feature's value as the example holds it (bytes for categorical, float for numeric)."""
  if feature.type == 'categorical':
    return _categorical(feature.name, value, max_bytes)
  return _in_range(feature.name, _finite_float(feature.name, value), feature.min, feature.max,
                   ('min', 'max'))


def record_to_example(record: Mapping[str, Any], config: PipelineConfig,
                      with_labels: bool = True) -> tf.train.Example:
  """Converts a decoded JSON record; raises RecordError naming the field that is wrong.

  `with_labels=False` builds a serving request for `serving_default`: no labels, no split key
  (unless it is a feature), and a feature the record lacks (absent or null) is left out, so
  the served model fills its default for it ('' for a categorical, an OOV bucket; 0 for a
  numeric, before clamping and scaling) - as it does for any request without it. A value that
  is present is checked as ingestion checks it.

  The example is filled in place (`feature[name].bytes_list.value.append`): building
  `tf.train.Feature` objects and passing them to the constructor copies each one into the map,
  and this function is the largest cost of ingestion (filling in place measured about 25%
  faster per record; see docs/performance.md).
  """
  if not isinstance(record, (dict, Mapping)):  # dict first: the abstract check is slow
    raise RecordError('not_an_object', f'expected a JSON object, got {type(record).__name__}')
  example = tf.train.Example()
  features = example.features.feature

  def value_of(name: str) -> Any:
    if name not in record or record[name] is None:
      raise RecordError(f'missing_field:{name}', f'required field {name} is missing')
    return record[name]

  split_key = config.data.split_key
  max_bytes = config.data.max_string_bytes
  if with_labels and split_key not in {f.name for f in config.features}:
    # The split key need not be a model feature, but ingestion splits by it, so it is kept.
    features[split_key].bytes_list.value.append(
        _categorical(split_key, value_of(split_key), max_bytes))
  for feature in config.features:
    if not with_labels and record.get(feature.name) is None:
      continue  # the served model's default
    value = value_of(feature.name)
    if feature.type == 'categorical':
      features[feature.name].bytes_list.value.append(
          _categorical(feature.name, value, max_bytes))
    else:
      features[feature.name].float_list.value.append(
          _in_range(feature.name, _finite_float(feature.name, value), feature.min, feature.max,
                    ('min', 'max')))
  if with_labels:
    for task in config.tasks:
      label, weight = _label_and_weight(task, record, config)
      if task.type == 'binary':
        features[task.label].int64_list.value.append(int(label))
      else:
        features[task.label].float_list.value.append(label)
      if task.weight_column is not None:
        features[task.weight_column].float_list.value.append(weight)
  return example


def _label(task, value: Any) -> Union[int, float]:
  if task.type == 'binary':
    return _binary_label(task.label, value)
  return _in_range(task.label, _finite_float(task.label, value), task.label_min, task.label_max,
                   ('label_min', 'label_max'))


def _in_space(task, record: Mapping[str, Any], config: PipelineConfig) -> bool:
  """Whether the record meets every condition of the task's `space.where` (a field that is
  absent or null meets none); a value present is read by its own field's rule."""
  labels = {t.label for t in config.tasks}
  for name, expected in task.space.where.items():
    value = record.get(name)
    if value is None:
      return False
    if name in labels:
      if _binary_label(name, value) != expected:
        return False
    elif _categorical(name, value, config.data.max_string_bytes) != str(expected).encode():
      return False
  return True


def _label_and_weight(task, record: Mapping[str, Any], config: PipelineConfig
                      ) -> Tuple[Union[int, float], float]:
  """The task's label as the example holds it and its example weight (`weight_column`).

  Outside the task's space (`space.where` unmet, or with `label_present` a label absent or
  null), the label may be absent: the example then holds 0 with weight 0 (ESMM reads that 0
  as "not clicked and converted"); a label that is present is still checked. Inside, the label
  is required and the weight is the row weight (`weight`, a finite number >= 0) or 1."""
  value = record.get(task.label)
  space = task.space
  inside = space is None or not space.where or _in_space(task, record, config)
  if value is None:
    if space is None or (inside and not space.label_present):
      raise RecordError(f'missing_field:{task.label}', f'required field {task.label} is missing'
                        + (f' (task {task.name} is defined on this record)' if space else ''))
    return 0, 0.0
  label = _label(task, value)
  if not inside:
    return label, 0.0
  if task.weight is None:
    return label, 1.0
  weight = record.get(task.weight)
  if weight is None:
    raise RecordError(f'missing_field:{task.weight}', f'required field {task.weight} (the row '
                      f'weight of task {task.name}) is missing')
  weight = _finite_float(task.weight, weight)
  if weight < 0:
    raise RecordError(f'out_of_range:{task.weight}',
                      f'{task.weight} is {weight}; a row weight must be >= 0')
  return label, weight


def record_to_instance(record: Mapping[str, Any], config: PipelineConfig) -> Dict[str, Any]:
  """A REST instance for `predict_instances` (`{"instances": [...]}`) from a log record, with
  ingestion's rules: a categorical written as an integer (`"hour": 21`) or an integral float
  becomes its decimal string, as TF Serving's REST API only puts JSON strings in a string
  input; a numeric value must be finite and within its configured range; a feature the record
  lacks gets the served model's default ('' or 0.0), as `predict_instances` needs every input.
  Raises RecordError naming the field."""
  if not isinstance(record, Mapping):
    raise RecordError('not_an_object', f'expected a JSON object, got {type(record).__name__}')
  instance: Dict[str, Any] = {}
  for feature in config.features:
    value = record.get(feature.name)
    if value is None:
      instance[feature.name] = '' if feature.type == 'categorical' else 0.0
    elif feature.type == 'categorical':
      instance[feature.name] = _feature_value(
          feature, value, config.data.max_string_bytes).decode('utf-8')
    else:
      instance[feature.name] = _feature_value(feature, value, None)
  return instance


def known_fields(config: PipelineConfig) -> FrozenSet[str]:
  """The log fields the config reads: features, the split key, the labels and row weights."""
  return frozenset([f.name for f in config.features] + [config.data.split_key] +
                   [t.label for t in config.tasks] + [t.weight for t in config.tasks if t.weight])


def unknown_fields(record: Mapping[str, Any], config: PipelineConfig,
                   known: Optional[FrozenSet[str]] = None) -> List[str]:
  """The record's fields that the config does not name (ignored), sorted."""
  known = known_fields(config) if known is None else known
  return sorted(name for name in record if name not in known)


def _pairs_without_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
  record = dict(pairs)
  if len(record) != len(pairs):
    seen = set()
    for key, _ in pairs:
      if key in seen:
        raise RecordError(f'duplicate_key:{key}', f'the field {key!r} appears more than once')
      seen.add(key)
  return record


# One decoder for every line (json.loads with a hook would build one per call); still C
# scanning, the hook only compares the object's size with its pair count.
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_without_duplicates)


def parse_line(line: Union[bytes, str], config: PipelineConfig) -> tf.train.Example:
  """Decodes one JSON line and converts it; raises RecordError with the reason."""
  return parse_line_with_unknown_fields(line, config)[0]


def parse_line_with_unknown_fields(line: Union[bytes, str], config: PipelineConfig,
                                   known: Optional[FrozenSet[str]] = None
                                   ) -> Tuple[tf.train.Example, List[str]]:
  """Like `parse_line`, and also returns the record's fields the config does not name."""
  if isinstance(line, bytes):
    try:
      line = line.decode('utf-8')
    except UnicodeDecodeError as e:
      raise RecordError('not_utf8', str(e)) from None
  try:
    record = _DECODER.decode(line)
  except RecordError:
    raise
  except ValueError as e:  # json.JSONDecodeError is a ValueError
    raise RecordError('malformed_json', str(e)) from None
  except RecursionError:
    raise RecordError('malformed_json', 'nested deeper than the JSON parser allows') from None
  example = record_to_example(record, config)
  return example, unknown_fields(record, config, known)


def quarantine_entry(line: Union[bytes, str], source: str, line_number: Optional[int],
                     error: RecordError) -> Dict[str, Any]:
  """The JSON-serialisable quarantine record for a rejected line (keeps the raw text)."""
  if isinstance(line, bytes):
    raw = line.decode('utf-8', errors='backslashreplace')
  else:
    raw = line
  return {
      'reason': error.reason,
      'detail': error.detail,
      'file': source,
      'line_number': line_number,
      'raw': raw.rstrip('\r\n'),
  }
