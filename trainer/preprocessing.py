"""tf.Transform preprocessing built from the pipeline config.

- categorical feature -> integer id from `tft.compute_and_apply_vocabulary` (top_k,
  frequency_threshold, OOV buckets from the config); ids >= vocabulary size are OOV buckets.
  The vocabulary files become assets of the exported model.
- numeric feature -> clamped to the range of the analysed data (tft.min / tft.max), then
  z-score, or z-score of log1p(max(x, 0)) (`log`), or passed as float; with `buckets`, also
  its quantile bucket id (`tft.bucketize`), which the network embeds; with
  `piecewise_linear`, also its piecewise-linear encoding over quantile bins (one float per
  bin, `<feature>__piece<t>`).
- labels -> float32, unchanged in value (binary 0/1, regression in its own units), so the
  losses and TFMA see the same label; a task with a space or a row weight also has its example
  weight (`<task>__weight`, written by ingestion: 0 outside the space), which the loss reads.

The outputs are packed by role into three columns (`transformed_layout`): every categorical
id in `categorical_ids` (int64), every scaled numeric value in `numeric_values` (float32),
every label, then every task's example weight, in `labels` (float32), one position per
feature, label or weight in config order. Parsing
a `tf.Example` costs mostly per feature it holds, so three columns instead of one per feature
and label take about a quarter off the Trainer's input CPU (docs/performance.md, change 8).
Labels have their own column because a serving request carries none: tf.Transform then drops
`labels` and still computes the other two. `unpack_transformed` gives the columns back by name.

Transform calls `preprocessing_fn(inputs, custom_config)` with
`custom_config = {'pipeline_config': <config JSON>}`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.config import BUCKET_SUFFIX, PIECE_SUFFIX, FeatureConfig, PipelineConfig

CONFIG_KEY = 'pipeline_config'

CATEGORICAL_COLUMN = 'categorical_ids'
NUMERIC_COLUMN = 'numeric_values'
LABEL_COLUMN = 'labels'


def bucket_name(feature_name: str) -> str:
  """The network input holding a numeric feature's quantile bucket (`buckets` in the config)."""
  return feature_name + BUCKET_SUFFIX


def piece_names(feature: FeatureConfig) -> List[str]:
  """The network inputs holding a numeric feature's piecewise-linear encoding, one per bin."""
  return [f'{feature.name}{PIECE_SUFFIX}{t}' for t in range(feature.piecewise_linear)]


def _bucket_inputs(config: PipelineConfig) -> List[str]:
  return [bucket_name(f.name) for f in config.numeric_features if f.buckets]


def _piece_inputs(config: PipelineConfig) -> List[str]:
  return [name for f in config.numeric_features for name in piece_names(f)]


def network_inputs(config: PipelineConfig) -> List[str]:
  """The transformed features the network reads, by name: every feature, then the quantile
  bucket of each numeric feature with `buckets`, then the bins of each with
  `piecewise_linear`."""
  return [f.name for f in config.features] + _bucket_inputs(config) + _piece_inputs(config)


def label_columns(config: PipelineConfig) -> List[str]:
  """The columns training reads besides the features: every task's label, then the example
  weight of each task with a space or a row weight."""
  return ([t.label for t in config.tasks] +
          [t.weight_column for t in config.tasks if t.weight_column])


def vocabulary_name(feature_name: str) -> str:
  """The vocabulary file name of a categorical feature (an asset of the served model)."""
  return f'vocab_{feature_name}'


def _dense(tensor: tf.Tensor) -> tf.Tensor:
  """Rank-1 dense values; the schema makes every feature a single required value."""
  if isinstance(tensor, tf.SparseTensor):
    tensor = tf.sparse.to_dense(tensor)
  return tf.reshape(tensor, [-1])


def transform_categorical(values: tf.Tensor, feature: FeatureConfig) -> tf.Tensor:
  values = _dense(values)
  if values.dtype != tf.string:
    values = tf.strings.as_string(values)
  return tft.compute_and_apply_vocabulary(
      values,
      top_k=feature.top_k,
      frequency_threshold=feature.frequency_threshold or None,
      num_oov_buckets=feature.oov_buckets,
      vocab_filename=vocabulary_name(feature.name))


def analysed_range(values: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(tft.min, tft.max) of a numeric feature's values: computed once per feature and shared by
  its clamping and its piecewise-linear edges (tf.Transform does not merge equal analyzers)."""
  values = tf.cast(_dense(values), tf.float32)
  return tft.min(values), tft.max(values)


def transform_numeric(values: tf.Tensor, feature: FeatureConfig,
                      value_range: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
  """The feature clamped to `value_range` (`analysed_range`: the range seen in the analysed,
  train, data), then scaled.

  Clamping changes nothing on the data analysed; a served request far outside it (a price of
  1e30) gets the prediction of the nearest value training saw, instead of a scaled input
  thousands of deviations away and an absurd output. The z-score is computed here from
  `tft.mean`/`tft.var` of the unclamped values rather than by `tft.scale_to_z_score` of the
  clamped ones: an analyzer over values that depend on other analyzers (the range) needs a
  second pass over the data, and these all run in the same one.
  """
  values = tf.cast(_dense(values), tf.float32)
  clamped = tf.clip_by_value(values, *value_range)
  if feature.scaling == 'log':
    return _z_score(tf.math.log1p(tf.maximum(clamped, 0.0)),
                    tf.math.log1p(tf.maximum(values, 0.0)))
  if feature.scaling == 'z_score':
    return _z_score(clamped, values)
  return clamped


def _z_score(values: tf.Tensor, analysed: tf.Tensor) -> tf.Tensor:
  """(values - mean) / standard deviation of `analysed` (values - mean when it is constant),
  as `tft.scale_to_z_score` computes it."""
  mean, variance = tft.mean(analysed), tft.var(analysed)
  deviation = tf.sqrt(variance)
  centered = values - mean
  return tf.where(deviation > 0, centered / deviation, centered)


def transform_buckets(values: tf.Tensor, feature: FeatureConfig) -> tf.Tensor:
  """The value's quantile bucket, 0 to `buckets` - 1, the boundaries being quantiles of the
  analysed (train) data (computed in the same pass as the other analyzers); values beyond
  them fall in the first or last bucket."""
  return tft.bucketize(tf.cast(_dense(values), tf.float32), num_buckets=feature.buckets)


def transform_piecewise_linear(values: tf.Tensor, feature: FeatureConfig,
                               value_range: Tuple[tf.Tensor, tf.Tensor]) -> List[tf.Tensor]:
  """The value's piecewise-linear encoding over `piecewise_linear` quantile bins of the
  analysed (train) data (Gorishniy, Rubachev & Babenko 2022, PLE): bin t = [l_t, r_t] gives
  0 below l_t, 1 above r_t and (x - l_t) / (r_t - l_t) inside, so the bins up to the value's
  are 1 and the rest 0, with the value's position in its own bin in between. The outer edges
  are `value_range` (`analysed_range`: the data's min and max). Quantiles can coincide (a
  value held by many rows, such as capital gains of 0): such a bin has no width and gives 1
  from its edge on. A value outside the analysed range is encoded as the range's nearest end
  (as `transform_numeric` clamps).
  Returns one tensor per bin."""
  values = tf.cast(_dense(values), tf.float32)
  inner = tft.quantiles(values, feature.piecewise_linear,
                        epsilon=min(1.0 / feature.piecewise_linear, 0.01))  # [1, bins - 1]
  low, high = value_range
  edges = tf.concat([tf.reshape(low, [1]), tf.reshape(inner, [-1]), tf.reshape(high, [1])],
                    axis=0)
  left, right = edges[tf.newaxis, :-1], edges[tf.newaxis, 1:]
  x = tf.clip_by_value(values, low, high)[:, tf.newaxis]
  width = right - left
  inside = tf.clip_by_value((x - left) / tf.where(width > 0, width, 1.0), 0.0, 1.0)
  encoded = tf.where(width > 0, inside, tf.cast(x >= right, tf.float32))
  # The reshape gives unstack the bin count the quantiles' shape does not carry statically.
  return tf.unstack(tf.reshape(encoded, [-1, feature.piecewise_linear]), axis=1)


def transformed_layout(config: PipelineConfig) -> Dict[str, Tuple[str, int]]:
  """Where each feature and label is in the transformed examples: name -> (column, index).
  Quantile buckets are integer ids, after the categorical features; piecewise-linear bins
  are floats, after the numeric features."""
  layout = {}
  for column, names in ((CATEGORICAL_COLUMN,
                         [f.name for f in config.categorical_features] + _bucket_inputs(config)),
                        (NUMERIC_COLUMN,
                         [f.name for f in config.numeric_features] + _piece_inputs(config)),
                        (LABEL_COLUMN, label_columns(config))):
    layout.update({name: (column, index) for index, name in enumerate(names)})
  return layout


def unpack_transformed(config: PipelineConfig,
                       packed: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The packed columns ([batch, width] each) as one [batch] tensor per feature and label.

  A column absent from `packed` is skipped: the serving graph has no `labels`.
  """
  return {name: packed[column][:, index]
          for name, (column, index) in transformed_layout(config).items() if column in packed}


def build_preprocessing_fn(config: PipelineConfig):
  """Returns a preprocessing_fn for this config (for tests and direct tf.Transform use)."""

  def preprocessing_fn(inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    values = {}
    for feature in config.features:
      if feature.type == 'categorical':
        values[feature.name] = transform_categorical(inputs[feature.name], feature)
      else:
        value_range = analysed_range(inputs[feature.name])
        values[feature.name] = transform_numeric(inputs[feature.name], feature, value_range)
        if feature.buckets:
          values[bucket_name(feature.name)] = transform_buckets(inputs[feature.name], feature)
        if feature.piecewise_linear:
          values.update(zip(piece_names(feature), transform_piecewise_linear(
              inputs[feature.name], feature, value_range)))
    for name in label_columns(config):
      values[name] = tf.cast(_dense(inputs[name]), tf.float32)
    columns: Dict[str, list] = {}
    for name, (column, _) in transformed_layout(config).items():  # in index order
      columns.setdefault(column, []).append(values[name])
    return {column: tf.stack(tensors, axis=1) for column, tensors in columns.items()}

  return preprocessing_fn


def preprocessing_fn(inputs: Mapping[str, tf.Tensor],
                     custom_config: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
  """The entry point TFX's Transform calls (by dotted path)."""
  config = PipelineConfig.from_json(custom_config[CONFIG_KEY])
  return build_preprocessing_fn(config)(inputs)
