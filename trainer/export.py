"""Serving signatures of the exported SavedModel.

- `serving_default`: a batch of serialized `tf.Example` holding raw log features (no labels)
  -> one output per task, named by the task, each of shape [batch, 1] (plus the
  architecture's extra outputs, e.g. ESMM's ctr, cvr and ctcvr). The tf.Transform graph
  (vocabularies as assets, scaling constants) runs inside the signature. A feature the
  request omits gets a default ('' for categorical, which maps to an OOV bucket; 0 for numeric).
- `predict_instances`: for REST clients sending raw feature values as JSON instances
  (`{"signature_name": "predict_instances", "instances": [{"item_category": "books", ...}]}`):
  one input tensor per feature, shape [batch], with the same outputs as `serving_default`.
- Both refuse what ingestion refuses in a numeric feature: a NaN or infinite value, or one
  outside the feature's configured `min`/`max`, fails the request with an error naming the
  feature, the rule and the rows (`item_price is not a finite number (NaN or infinite):
  ingestion quarantines it as non_finite:item_price; request rows: [3]`). A finite value
  outside the range training saw is clamped to it by the transform graph
  (`trainer.preprocessing.transform_numeric`).
- With `serving.score`, both also return the ranking score under its name: the task outputs
  (and raw numeric features) combined by `RankingScore`, whose weights are variables of the
  SavedModel, so that `mtlp rescore` can change them without retraining.
- `transform_features`: serialized examples with every raw column -> transformed features and
  labels by name, unpacked from tf.Transform's packed columns (what the network sees: for
  debugging a prediction, and for benchmarks that time the network alone). TFMA does not run
  it: it reads labels from the raw columns (see `pipeline.pipeline.build_eval_config`).
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.config import SCORE_PRODUCT_FLOOR, PipelineConfig, ScoreConfig
from trainer.models import output_labels
from trainer.preprocessing import network_inputs, unpack_transformed

SERVING_SIGNATURE = 'serving_default'
INSTANCES_SIGNATURE = 'predict_instances'
TRANSFORM_SIGNATURE = 'transform_features'


class RankingScore(tf.Module):
  """serving.score in the graph: weighted_sum is sum_i w_i x_i, weighted_product is
  prod_i max(x_i, SCORE_PRODUCT_FLOOR) ** w_i (computed as exp(sum_i w_i log max(...))).

  The term names, the combination and the weights are saved with the model (the weights as a
  variable), so a loaded model says what it computes and `rescore` can assign new weights.
  """

  def __init__(self, score: ScoreConfig):
    super().__init__(name='ranking_score')
    self.term_names = tf.Variable(list(score.weights), trainable=False, name='term_names')
    self.combine = tf.Variable(score.combine, trainable=False, name='combine')
    self.term_weights = tf.Variable([float(w) for w in score.weights.values()],
                                    dtype=tf.float32, trainable=False, name='term_weights')
    self._terms = list(score.weights)
    self._product = score.combine == 'weighted_product'

  def __call__(self, values: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """`values`: each term's [batch, 1] float32 value -> the score, [batch, 1]."""
    stacked = tf.concat([tf.reshape(tf.cast(values[name], tf.float32), [-1, 1])
                         for name in self._terms], axis=1)
    if self._product:
      stacked = tf.math.log(tf.maximum(stacked, SCORE_PRODUCT_FLOOR))
    combined = tf.reduce_sum(stacked * self.term_weights[tf.newaxis, :], axis=1, keepdims=True)
    return tf.exp(combined) if self._product else combined


def serving_feature_spec(config: PipelineConfig, tf_transform_output: tft.TFTransformOutput
                         ) -> Dict[str, tf.io.FixedLenFeature]:
  """Parse spec of the raw features a serving request carries, with defaults for omissions."""
  raw_spec = tf_transform_output.raw_feature_spec()
  spec = {}
  for feature in config.features:
    raw = raw_spec[feature.name]
    shape = list(raw.shape) if isinstance(raw, tf.io.FixedLenFeature) else []
    default = '' if raw.dtype == tf.string else 0
    size = 1
    for dim in shape:
      size *= dim
    spec[feature.name] = tf.io.FixedLenFeature(
        shape, raw.dtype, default_value=[default] * size if shape else default)
  return spec


def input_checks(config: PipelineConfig, raw_features: Dict[str, tf.Tensor]
                 ) -> List[tf.Operation]:
  """Assertions that fail a request holding a numeric value ingestion would quarantine (not
  finite, or outside the feature's configured min/max), naming the feature and the rows."""
  checks = []
  for feature in config.numeric_features:
    values = tf.reshape(raw_features[feature.name], [-1])
    finite = tf.math.is_finite(values)
    rules = [(finite, 'is not a finite number (NaN or infinite): ingestion quarantines it as '
                      f'non_finite:{feature.name}')]
    for bound, ok in (('min', lambda v, b: v >= b), ('max', lambda v, b: v <= b)):
      limit = getattr(feature, bound)
      if limit is not None:
        rules.append((tf.logical_or(tf.logical_not(finite), ok(values, limit)),
                      f'is {"below" if bound == "min" else "above"} {bound}={limit:g} in the '
                      f'config: ingestion quarantines it as out_of_range:{feature.name}'))
    for ok, rule in rules:
      checks.append(tf.debugging.Assert(
          tf.reduce_all(ok), [f'{feature.name} {rule}; request rows:',
                              tf.where(tf.logical_not(ok))[:, 0]], summarize=20))
  return checks


def make_serving_signatures(network: tf.keras.Model, config: PipelineConfig,
                            tf_transform_output: tft.TFTransformOutput):
  """Returns {signature name: concrete function} for serving, REST instances and debugging."""
  # Tracked on the model so the transform graph and its assets are saved with it.
  network.tft_layer = tf_transform_output.transform_features_layer()
  feature_names = network_inputs(config)
  output_names = list(output_labels(config))
  serving_spec = serving_feature_spec(config, tf_transform_output)

  score = config.serving.score
  if score is not None:
    network.ranking_score = RankingScore(score)  # tracked: saved, and reassignable

  def predict(raw_features):
    with tf.control_dependencies(input_checks(config, raw_features)):
      raw_features = {name: tf.identity(value) for name, value in raw_features.items()}
    transformed = unpack_transformed(config, network.tft_layer(raw_features))
    outputs = network({name: transformed[name] for name in feature_names}, training=False)
    served = {name: outputs[name] for name in output_names}
    if score is not None:
      served[score.name] = network.ranking_score({**raw_features, **served})
    return served

  @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')])
  def serve_tf_examples_fn(serialized_examples):
    return predict(tf.io.parse_example(serialized_examples, serving_spec))

  instance_spec = {name: tf.TensorSpec(shape=[None], dtype=spec.dtype, name=name)
                   for name, spec in serving_spec.items()}

  @tf.function(input_signature=[instance_spec])
  def predict_instances_fn(features):
    # Same layout as parsed examples: each FixedLenFeature of shape [1] is [batch, 1].
    return predict({name: tf.reshape(features[name], [-1] + list(serving_spec[name].shape))
                    for name in serving_spec})

  @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')])
  def transform_features_fn(serialized_examples):
    raw_features = tf.io.parse_example(serialized_examples,
                                       tf_transform_output.raw_feature_spec())
    return unpack_transformed(config, network.tft_layer(raw_features))

  return {
      SERVING_SIGNATURE: serve_tf_examples_fn.get_concrete_function(),
      INSTANCES_SIGNATURE: predict_instances_fn.get_concrete_function(),
      TRANSFORM_SIGNATURE: transform_features_fn.get_concrete_function(),
  }


def export_serving_model(network: tf.keras.Model, config: PipelineConfig,
                         tf_transform_output: tft.TFTransformOutput, export_dir: str) -> None:
  """Writes the SavedModel that TFMA evaluates and TF Serving loads."""
  signatures = make_serving_signatures(network, config, tf_transform_output)
  network.save(export_dir, save_format='tf', signatures=signatures)
