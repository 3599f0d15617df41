"""What a config value may be, said once for both of its readers: the validator and the JSON Schema.

Each config field (pipeline/config.py) carries, in its dataclass metadata, a description, a
`Rule` and, for a field that applies only to some entries (a numeric feature's `scaling`), a
`Condition`. A rule parses a value (raising ConfigError that names the key and what is allowed)
and describes the same constraint as JSON Schema (draft 2020-12), so `mtlp config-schema` and
the validator cannot disagree on a key, a type, a bound or an allowed value. What JSON Schema
cannot say (one field against another: min above max, a task named twice, a label that is also
a feature) is checked by the validator alone, after the rules (pipeline/config.py).

Why not pydantic (in the dependency set): in its default lax mode it turns '3' into 3 and 'yes'
into True, which a config must refuse; its messages ('Input should be greater than or equal to
1' at a location tuple) would need a translation layer to keep naming the key and what is
allowed as ours do; and the checks between values stay hand-written either way.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


class ConfigError(ValueError):
  """A config that cannot be used; the message names the key."""


Schema = Dict[str, Any]

# The largest finite float: JSON Schema has no "finite", but a bound at it refuses .inf.
_FLOAT_MAX = sys.float_info.max


def field(default: Any = dataclasses.MISSING, *, doc: str, rule: 'Rule',
          applies: Optional['Condition'] = None, applies_message: str = '') -> Any:
  """A config dataclass field: its default, description and rule, and optionally the condition
  on its entry under which it may differ from its default (`applies_message` says why not,
  formatted with the entry's fields)."""
  metadata = {'doc': doc, 'rule': rule, 'applies': applies, 'applies_message': applies_message}
  if isinstance(default, (dict, list)):
    value = default
    return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def required(cls: type) -> List[str]:
  return [f.name for f in dataclasses.fields(cls)
          if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def default_of(f: dataclasses.Field) -> Any:
  if f.default is not dataclasses.MISSING:
    return f.default
  if f.default_factory is not dataclasses.MISSING:
    return f.default_factory()
  return dataclasses.MISSING


def require_mapping(value: Any, path: str) -> Mapping[str, Any]:
  if not isinstance(value, Mapping):
    raise ConfigError(f'{path}: expected a mapping, got {type(value).__name__}')
  return value


def _key_path(path: str, key: str) -> str:
  return f'{path}.{key}' if path else key


def check_keys(raw: Mapping[str, Any], path: str, allowed: Sequence[str],
               needed: Sequence[str] = ()) -> None:
  for key in raw:
    if key not in allowed:
      raise ConfigError(f'{_key_path(path, key)}: unknown key; allowed keys are '
                        f'{", ".join(allowed)}')
  for key in needed:
    if key not in raw or raw[key] is None:
      raise ConfigError(f'{_key_path(path, key)}: required key is missing')


class Rule:
  """What one value may be."""

  def parse(self, value: Any, path: str) -> Any:
    raise NotImplementedError

  def schema(self) -> Schema:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Number(Rule):
  kind: type = float
  minimum: Optional[float] = None
  maximum: Optional[float] = None
  exclusive_min: bool = False
  finite: bool = False
  also_allowed: str = ''  # how an Either names its other choices in this rule's message

  def parse(self, value: Any, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        self.kind is int and not float(value).is_integer()):
      raise ConfigError(f'{path}: expected {"an integer" if self.kind is int else "a number"}'
                        f'{" or " + self.also_allowed if self.also_allowed else ""}, '
                        f'got {value!r}')
    value = self.kind(value)
    if self.finite and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
      raise ConfigError(f'{path}: must be a finite number, got {value!r}')
    if self.minimum is not None and (value <= self.minimum if self.exclusive_min
                                     else value < self.minimum):
      raise ConfigError(f'{path}: {value} must be {">" if self.exclusive_min else ">="} '
                        f'{self.minimum}')
    if self.maximum is not None and value > self.maximum:
      raise ConfigError(f'{path}: {value} must be <= {self.maximum}')
    return value

  def schema(self) -> Schema:
    schema: Schema = {'type': 'integer' if self.kind is int else 'number'}
    if self.finite:
      schema.update(minimum=-_FLOAT_MAX, maximum=_FLOAT_MAX)
    if self.minimum is not None:
      schema['exclusiveMinimum' if self.exclusive_min else 'minimum'] = self.minimum
    if self.maximum is not None:
      schema['maximum'] = self.maximum
    return schema


@dataclasses.dataclass(frozen=True)
class Steps(Rule):
  """A number in [first, last] that is a whole number of `step`s (e.g. 0.01 to 0.9 by 0.01).

  JSON Schema's multipleOf fails on binary fractions (0.07 / 0.01 is 7.000000000000001), so the
  schema lists the values."""
  first: float
  last: float
  step: float
  why: str

  def values(self) -> List[float]:
    count = round((self.last - self.first) / self.step)
    return [round(self.first + i * self.step, 10) for i in range(count + 1)]

  def parse(self, value: Any, path: str) -> Any:
    value = Number(minimum=self.first, maximum=self.last).parse(value, path)
    if abs(value / self.step - round(value / self.step)) > 1e-9:
      raise ConfigError(f'{path}: {value} {self.why}')
    return value

  def schema(self) -> Schema:
    return {'enum': self.values()}


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
  values: Tuple[Any, ...]
  label: str = ''  # shown after the path, e.g. ' (metric)' for a mapping's key

  def parse(self, value: Any, path: str) -> Any:
    if value not in self.values or isinstance(value, (list, dict)):
      raise ConfigError(f'{path}{self.label}: {value!r} is not one of '
                        f'{", ".join(map(str, self.values))}')
    return value

  def schema(self) -> Schema:
    return {'enum': list(self.values)}


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A string matching a pattern (by default any non-empty string)."""
  pattern: str = ''
  what: str = 'a non-empty string'
  max_length: Optional[int] = None
  not_patterns: Tuple[Tuple[str, str], ...] = ()  # (regex, why it is refused)
  from_number: bool = False  # a number is taken as its decimal string (Kubernetes quantities)
  message: str = 'expected {what}, got {value!r}'

  def parse(self, value: Any, path: str) -> Any:
    if self.from_number and isinstance(value, (int, float)) and not isinstance(value, bool):
      value = str(value)
    if not isinstance(value, str) or not value or (
        self.pattern and not re.search(self.pattern, value)) or (
        self.max_length is not None and len(value) > self.max_length):
      raise ConfigError(f'{path}: ' + self.message.format(what=self.what, value=value))
    for pattern, why in self.not_patterns:
      if re.search(pattern, value):
        raise ConfigError(f'{path}: {value!r} {why}')
    return value

  def schema(self) -> Schema:
    schema: Schema = {'type': 'string', 'minLength': 1}
    if self.pattern:
      schema['pattern'] = self.pattern
    if self.max_length is not None:
      schema['maxLength'] = self.max_length
    if self.not_patterns:
      schema['not'] = {'anyOf': [{'pattern': p} for p, _ in self.not_patterns]}
    if self.from_number:
      schema = {'anyOf': [schema, {'type': 'number', 'minimum': 0, 'maximum': _FLOAT_MAX}]}
    return schema


NAME_PATTERN = r'^[A-Za-z0-9_]*[A-Za-z0-9][A-Za-z0-9_]*$'


def Name(**kwargs: Any) -> Text:  # pylint: disable=invalid-name
  """A name of letters, digits and _ (a feature, task or model name)."""
  return Text(pattern=NAME_PATTERN, what='a non-empty name of letters, digits and _',
              message='{value!r} must be {what}', **kwargs)


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
  def parse(self, value: Any, path: str) -> Any:
    if not isinstance(value, bool):
      raise ConfigError(f'{path}: expected true or false, got {value!r}')
    return value

  def schema(self) -> Schema:
    return {'type': 'boolean'}


@dataclasses.dataclass(frozen=True)
class Const(Rule):
  value: Any

  def parse(self, value: Any, path: str) -> Any:
    if value != self.value or isinstance(value, bool) != isinstance(self.value, bool):
      raise ConfigError(f'{path}: expected {self.value!r}, got {value!r}')
    return value

  def schema(self) -> Schema:
    return {'const': self.value}


@dataclasses.dataclass(frozen=True)
class Either(Rule):
  """The value as the first of the rules that accepts it parses it. When none does, the error
  is that of the first rule for the value's type (`Optional_(Number(minimum=1))` given 0 says
  it must be >= 1), else the last rule's."""
  rules: Tuple[Rule, ...]

  def parse(self, value: Any, path: str) -> Any:
    typed, last = None, None
    for rule in self.rules:
      try:
        return rule.parse(value, path)
      except ConfigError as e:
        last = e
        typed = typed or (e if _has_type(value, rule) else None)
    raise typed or last

  def schema(self) -> Schema:
    return {'anyOf': [r.schema() for r in self.rules]}


def _has_type(value: Any, rule: Rule) -> bool:
  if isinstance(rule, Number):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(rule, (Text, Percentage)):
    return isinstance(value, str)
  if isinstance(rule, ListOf):
    return isinstance(value, (list, tuple))
  if isinstance(rule, Section):
    return isinstance(value, Mapping)
  if isinstance(rule, Flag):
    return isinstance(value, bool)
  return False


@dataclasses.dataclass(frozen=True)
class Off(Rule):
  """A count where 0 or null means none (parsed as 0), else the number rule."""
  number: Number

  def parse(self, value: Any, path: str) -> Any:
    return 0 if value is None or (value == 0 and not isinstance(value, bool)) else (
        self.number.parse(value, path))

  def schema(self) -> Schema:
    return {'anyOf': [{'enum': [0, None]}, self.number.schema()]}


def Optional_(rule: Rule) -> Rule:  # pylint: disable=invalid-name
  """The rule, or null."""
  return Either((Const(None), rule))


@dataclasses.dataclass(frozen=True)
class Percentage(Rule):
  """A percentage below 100 such as '2%' (relative to another value)."""
  PATTERN = r'^[0-9]{1,2}(\.[0-9]+)?%$'

  def parse(self, value: Any, path: str) -> Any:
    if not isinstance(value, str) or not re.match(self.PATTERN, value):
      raise ConfigError(f'{path}: {value!r} is not a percentage from 0% to below 100% such '
                        'as "2%"')
    return value

  def schema(self) -> Schema:
    return {'type': 'string', 'pattern': self.PATTERN}


@dataclasses.dataclass(frozen=True)
class ListOf(Rule):
  item: Rule
  what: str  # what the list holds, for the message: 'layer sizes'
  non_empty: bool = False
  min_items: int = 0
  max_items: Optional[int] = None
  unique: bool = False

  def parse(self, value: Any, path: str) -> Any:
    if not isinstance(value, (list, tuple)) or (self.non_empty and not value):
      raise ConfigError(f'{path}: expected a {"non-empty " if self.non_empty else ""}list of '
                        f'{self.what}, got {value!r}')
    if len(value) < self.min_items or (self.max_items is not None
                                       and len(value) > self.max_items):
      raise ConfigError(f'{path}: expected a list of {self.what}, got {value!r}')
    if self.unique:
      for i, item in enumerate(value):
        if item in value[:i]:
          raise ConfigError(f'{path}: {list(value)!r} lists {item!r} twice')
    return tuple(self.item.parse(v, f'{path}[{i}]') for i, v in enumerate(value))

  def schema(self) -> Schema:
    schema: Schema = {'type': 'array', 'items': self.item.schema()}
    if self.non_empty or self.min_items:
      schema['minItems'] = max(int(self.non_empty), self.min_items)
    if self.max_items is not None:
      schema['maxItems'] = self.max_items
    if self.unique:
      schema['uniqueItems'] = True
    return schema


@dataclasses.dataclass(frozen=True)
class MapOf(Rule):
  """A mapping whose keys follow one rule (a set of names, or any name) and values another."""
  keys: Rule
  value: Rule
  non_empty: bool = False

  def parse(self, value: Any, path: str) -> Any:
    result = {}
    if self.non_empty and not value:
      raise ConfigError(f'{path}: expected a non-empty mapping, got {value!r}')
    for key, item in require_mapping(value if value is not None else {}, path).items():
      self.keys.parse(key, f'{path}.{key}')
      result[key] = self.value.parse(item, f'{path}.{key}')
    return result

  def schema(self) -> Schema:
    if self.non_empty:
      return {'type': 'object', 'minProperties': 1, 'propertyNames': self.keys.schema(),
              'additionalProperties': self.value.schema()}
    return {'type': ['object', 'null'], 'propertyNames': self.keys.schema(),
            'additionalProperties': self.value.schema()}


@dataclasses.dataclass(frozen=True)
class Section(Rule):
  """A mapping read into a config dataclass, field by field with each field's rule; then its
  `applies` conditions, and the dataclass's own `check(path)` if it has one."""
  cls: type
  default: Any = None  # the value whose fields an absent key keeps (a field's own default)
  what: str = ''  # for the schema's description of a nested section
  at_least_one: bool = False  # an empty mapping is refused

  def parse(self, value: Any, path: str) -> Any:
    raw = require_mapping({} if value is None and self.default is not None else value, path)
    fields = {f.name: f for f in dataclasses.fields(self.cls)}
    check_keys(raw, path, list(fields), required(self.cls))
    if self.at_least_one and not any(v is not None for v in raw.values()):
      raise ConfigError(f'{path}: give at least one of {", ".join(fields)}')
    kwargs = {k: rule_of(fields[k]).parse(v, _key_path(path, k)) for k, v in raw.items()}
    result = (dataclasses.replace(self.default, **kwargs) if self.default is not None
              else self.cls(**kwargs))
    for f in fields.values():
      condition = f.metadata.get('applies')
      if condition is not None and not condition.holds(result) and (
          getattr(result, f.name) != default_of(f)):
        raise ConfigError(f'{_key_path(path, f.name)}: '
                          + f.metadata['applies_message'].format(**{
                              g: getattr(result, g) for g in fields}))
    if hasattr(result, 'check'):
      result.check(path)
    return result

  def schema(self) -> Schema:
    schema = dataclass_schema(self.cls, self.default, self.at_least_one)
    return schema if self.default is None else {'anyOf': [schema, {'type': 'null'}]}


@dataclasses.dataclass(frozen=True)
class Toggle(Rule):
  """A section that is off (null or false), on with its defaults (true), or given."""
  section: Section

  def parse(self, value: Any, path: str) -> Any:
    if value is None or value is False:
      return None
    if value is True:
      return self.section.cls()
    return self.section.parse(value, path)

  def schema(self) -> Schema:
    return {'anyOf': [{'type': ['null', 'boolean']}, self.section.schema()]}


def rule_of(f: dataclasses.Field) -> Rule:
  if 'rule' not in f.metadata:
    raise AssertionError(f'config field {f.name} has no rule')
  return f.metadata['rule']


class Condition:
  """When a field applies, on its entry's other fields."""

  def holds(self, entry: Any) -> bool:
    raise NotImplementedError

  def schema(self) -> Schema:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Is(Condition):
  key: str
  value: Any

  def holds(self, entry: Any) -> bool:
    return getattr(entry, self.key) == self.value

  def schema(self) -> Schema:
    return {'properties': {self.key: {'const': self.value}}, 'required': [self.key]}


@dataclasses.dataclass(frozen=True)
class IsSet(Condition):
  """The key is given and neither 0 nor null."""
  key: str

  def holds(self, entry: Any) -> bool:
    return bool(getattr(entry, self.key))

  def schema(self) -> Schema:
    return {'properties': {self.key: {'not': {'enum': [0, None]}}}, 'required': [self.key]}


@dataclasses.dataclass(frozen=True)
class AnyOf(Condition):
  conditions: Tuple[Condition, ...]

  def holds(self, entry: Any) -> bool:
    return any(c.holds(entry) for c in self.conditions)

  def schema(self) -> Schema:
    return {'anyOf': [c.schema() for c in self.conditions]}


def _json_default(value: Any) -> Any:
  if dataclasses.is_dataclass(value):
    return {k: _json_default(v) for k, v in dataclasses.asdict(value).items()}
  if isinstance(value, tuple):
    return [_json_default(v) for v in value]
  if isinstance(value, dict):
    return {k: _json_default(v) for k, v in value.items()}
  return value


def dataclass_schema(cls: type, default: Any = None, at_least_one: bool = False) -> Schema:
  """The JSON Schema of a config dataclass: every field with its rule's schema, description and
  default; unknown keys refused; required keys required (and not null); a field that applies
  only under a condition is otherwise held to its default."""
  properties: Schema = {}
  conditions: List[Schema] = []
  for f in dataclasses.fields(cls):
    schema = dict(rule_of(f).schema())
    schema['description'] = f.metadata['doc']
    value = getattr(default, f.name) if default is not None else default_of(f)
    if value is not dataclasses.MISSING:
      schema['default'] = _json_default(value)
    properties[f.name] = schema
    condition = f.metadata.get('applies')
    if condition is not None:
      held = [_json_default(default_of(f))]
      if held[0] is not None and _parses_to(rule_of(f), None, default_of(f)):
        held.append(None)  # null also means the default (e.g. buckets: none)
      conditions.append({'anyOf': [condition.schema(),
                                   {'properties': {f.name: {'enum': held}}}]})
  needed = required(cls)
  schema = {'type': 'object', 'properties': properties, 'additionalProperties': False}
  if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + '('):
    schema['description'] = ' '.join(cls.__doc__.split())
  if needed:  # (no required field's rule takes null, so null is refused as missing is)
    schema['required'] = needed
  if at_least_one:
    schema['minProperties'] = 1
    schema['anyOf'] = [{'properties': {f.name: {'not': {'type': 'null'}}}, 'required': [f.name]}
                       for f in dataclasses.fields(cls)]
  if hasattr(cls, 'schema_conditions'):  # what the dataclass's check() says of its fields
    conditions += cls.schema_conditions()
  if conditions:
    schema['allOf'] = conditions
  return schema


def _parses_to(rule: Rule, value: Any, expected: Any) -> bool:
  try:
    return rule.parse(value, '') == expected
  except ConfigError:
    return False


def check_documented(cls: type, seen: Optional[set] = None) -> List[str]:
  """Fields of a config dataclass (and the sections inside it) without a rule or description."""
  seen = seen if seen is not None else set()
  if cls in seen:
    return []
  seen.add(cls)
  missing = []
  for f in dataclasses.fields(cls):
    if not f.metadata.get('doc') or 'rule' not in f.metadata:
      missing.append(f'{cls.__name__}.{f.name}')
      continue
    for rule in _rules_in(f.metadata['rule']):
      if isinstance(rule, Section):
        missing += check_documented(rule.cls, seen)
  return missing


def _rules_in(rule: Rule) -> List[Rule]:
  inner: List[Rule] = [rule]
  if isinstance(rule, Either):
    for r in rule.rules:
      inner += _rules_in(r)
  elif isinstance(rule, ListOf):
    inner += _rules_in(rule.item)
  elif isinstance(rule, MapOf):
    inner += _rules_in(rule.value)
  elif isinstance(rule, Toggle):
    inner += _rules_in(rule.section)
  return inner
