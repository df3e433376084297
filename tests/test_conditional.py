"""Conditional models: causality with every conditioning path, the cached
sampler on all of them, conditioning that is actually used, gradients that
reach the encoder and the embedding path, bad inputs, and the modes end to
end on generated data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fashion_mnist_autoencoder
from configs import fashion_mnist_embedding
from configs import fashion_mnist_embedding_pixelcnn
from configs import fashion_mnist_multiscale
from gated_pixelcnn import checkpointing
from gated_pixelcnn import conditioning
from gated_pixelcnn import influence
from gated_pixelcnn import likelihood
from gated_pixelcnn import models
from gated_pixelcnn import modes
from gated_pixelcnn import runs
from gated_pixelcnn import sampling
from gated_pixelcnn import steps
from gated_pixelcnn import train
from tests import draws
from tests import helpers

SMALL = dict(num_layers=2, features=6, kernel_size=3, first_kernel_size=3,
             head_features=6)


def _conditional(kind, C, H=5, W=6):
  """(model, conditioning kwargs for one image) of each conditioning path."""
  rng = np.random.default_rng(3)
  small = dict(SMALL, num_channels=C, features=8 * C, head_features=8 * C)
  if kind == 'global_vector':
    return (models.ConditionalPixelCNN(**small),
            {'cond': jnp.asarray(rng.normal(size=(1, 4)), jnp.float32)})
  if kind == 'spatial_vector':
    return (models.ConditionalPixelCNN(**small, conditioning='spatial',
                                       spatial_features=3, spatial_hidden=4),
            {'cond': jnp.asarray(rng.normal(size=(1, 4)), jnp.float32)})
  if kind == 'spatial_low_res_image':   # multi-scale
    low = rng.integers(0, 256, (1, (H + 1) // 2, (W + 1) // 2, C))
    return (models.ConditionalPixelCNN(**small, conditioning='spatial',
                                       spatial_features=3, spatial_hidden=4),
            {'cond': jnp.asarray(low, jnp.int32)})
  conditioning_type = kind.split('_')[1]
  encoder_images = rng.integers(0, 256, (1, H, W, C))
  return (models.PixelCNNAutoEncoder(**small, conditioning=conditioning_type,
                                     bottleneck=3, encoder_features=4,
                                     spatial_features=3, spatial_hidden=4),
          {'encoder_images': jnp.asarray(encoder_images, jnp.int32)})


KINDS = ['global_vector', 'spatial_vector', 'spatial_low_res_image',
         'autoencoder_global', 'autoencoder_spatial']


@pytest.mark.parametrize('C', [1, 3])
@pytest.mark.parametrize('kind', KINDS)
def test_conditional_models_are_exactly_causal(kind, C):
  """With h held fixed (it may depend on anything), the image path has no
  leak and no blind spot: the influence pattern is exactly the Gated
  PixelCNN's receptive field, bit for bit."""
  H, W = 5, 6
  model, cond = _conditional(kind, C, H, W)
  changed = influence.influence(model, H, W, C, **cond)
  assert not (changed & ~influence.causal_order(H, W, C)).any()
  expected = influence.gated_receptive_field(H, W, C, 2, 3, 3)
  assert np.array_equal(changed, expected)


@pytest.mark.parametrize('kind', KINDS)
def test_conditioning_reaches_every_pixel(kind):
  """Changing h changes the logits of every sub-pixel, the first included."""
  H, W, C = 5, 6, 1
  model, cond = _conditional(kind, C, H, W)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, H, W, C)))
  variables = model.init(jax.random.PRNGKey(0), images, **cond)
  variables = jax.tree_util.tree_map_with_path(influence.randomize_bias,
                                               variables)
  (name, h), = cond.items()
  other = (255 - h) if jnp.issubdtype(h.dtype, jnp.integer) else h + 1.0
  a = np.asarray(model.apply(variables, images, **{name: h}))
  b = np.asarray(model.apply(variables, images, **{name: other}))
  assert (a != b).any(axis=-1).all()


def _decoder_case(kind, C, H, W, batch):
  model, cond = _conditional(kind, C, H, W)
  images = jnp.zeros((1, H, W, C), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), images, **cond)
  variables = jax.tree_util.tree_map_with_path(influence.randomize_bias,
                                               variables)
  (name, value), = cond.items()
  value = jnp.repeat(value, batch, axis=0) + (
      jnp.arange(batch).reshape(-1, *[1] * (value.ndim - 1)) *
      (1 if jnp.issubdtype(value.dtype, jnp.integer) else 0.5)).astype(
          value.dtype)
  if name == 'encoder_images':
    h = model.apply(variables, value, method='encode')
  else:
    h = value
  return model, variables, {name: value}, h


@pytest.mark.parametrize('kind,C', [(k, 1) for k in KINDS] +
                         [('spatial_low_res_image', 3),
                          ('autoencoder_global', 3)])
def test_decoder_inputs_reproduce_the_model_and_samplers_agree(kind, C):
  H, W, B = 4, 5, 3
  model, variables, cond, h = _decoder_case(kind, C, H, W, B)
  decoder, dvars, inputs = sampling.decoder_inputs(model, variables, h,
                                                   (H, W, C))
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256,
                                                         (B, H, W, C)))
  # The decoder with the conditioning inputs is the model, bit for bit.
  np.testing.assert_array_equal(
      np.asarray(decoder.apply(dvars, images, **inputs)),
      np.asarray(model.apply(variables, images, **cond)))
  # Both samplers give the same images; multi-scale keeps the given pixels.
  fixed = np.zeros((H, W, C), bool)
  fixed[::2, ::2] = True
  rng = jax.random.PRNGKey(4)
  out = {m: np.asarray(sampling.complete(decoder, dvars, rng, images, 0,
                                         method=m, fixed=fixed, **inputs))
         for m in ('naive', 'cached')}
  assert draws.margin(decoder, dvars, rng, out['naive'], fixed=fixed,
                      **inputs) >= draws.MARGIN
  np.testing.assert_array_equal(out['naive'], out['cached'])
  np.testing.assert_array_equal(out['cached'][:, ::2, ::2],
                                np.asarray(images)[:, ::2, ::2])
  assert (out['cached'] != np.asarray(images)).any()


# ---------------------------------------------- conditioning is used


def _synthetic(num_classes=4, n=64, H=6, W=6, seed=0):
  """Images fully determined by their class: one random pattern each."""
  rng = np.random.default_rng(seed)
  patterns = rng.integers(0, 256, (num_classes, H, W, 1))
  labels = np.arange(n) % num_classes
  return jnp.asarray(patterns[labels], jnp.int32), jnp.asarray(labels,
                                                               jnp.int32)


def _fit(model, batch, num_steps=60, lr=1e-2):
  """Trains ``model`` with the project's train step on one fixed batch."""
  tx = optax.adam(lr)
  params = model.init(jax.random.PRNGKey(0), batch['image'][:1], **{
      k: v[:1] for k, v in steps.model_kwargs(model, batch).items()}
                      )['params']
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), ema_params=None,
                           rng=jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: steps.train_step(
      s, b, model=model, tx=tx, schedule=lambda _: lr, ema_decay=0.0))
  for _ in range(num_steps):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics['bits_per_dim']))
  return state.params


def _bits(model, params, batch):
  scale = np.prod(batch['image'].shape[1:]) * np.log(2)
  return float(steps.per_example_loss(model, params, batch).mean() / scale)


def test_class_conditioning_is_used():
  images, labels = _synthetic()
  model = models.GatedPixelCNN(**SMALL, num_classes=4)
  params = _fit(model, {'image': images, 'label': labels})
  true = _bits(model, params, {'image': images, 'label': labels})
  shuffled = _bits(model, params, {'image': images, 'label': (labels + 1) % 4})
  assert true < shuffled - 1.0, (true, shuffled)


def test_autoencoder_uses_its_own_h():
  images, _ = _synthetic()
  model = models.PixelCNNAutoEncoder(**SMALL, bottleneck=4, encoder_features=8)
  params = _fit(model, {'image': images})
  own = _bits(model, params, {'image': images})
  # The h of another image (of another class: the classes cycle).
  logits = model.apply({'params': params}, images,
                       encoder_images=jnp.roll(images, 1, axis=0))
  other = float(jnp.mean(likelihood.bits_per_dim(logits, images)))
  assert own < other - 1.0, (own, other)


def test_gradients_reach_the_encoder_m_and_the_embedding_path():
  images, _ = _synthetic(n=4)
  for model, batch in [
      (models.PixelCNNAutoEncoder(**SMALL, bottleneck=3, encoder_features=4,
                                  conditioning='spatial', spatial_hidden=4),
       {'image': images}),
      (models.ConditionalPixelCNN(**SMALL),
       {'image': images, 'cond': jnp.ones((4, 5), jnp.float32)})]:
    params = model.init(jax.random.PRNGKey(0), images[:1], **{
        k: v[:1] for k, v in steps.model_kwargs(model, batch).items()}
                        )['params']

    def loss(params, cond=None):
      b = batch if cond is None else {**batch, 'cond': cond}
      return steps.per_example_loss(model, params, b).mean()

    grads = jax.grad(loss)(params)
    paths = ['encoder', 'm'] if 'encoder' in params else [
        'decoder/block_0/global_cond', 'decoder/block_1/global_cond']
    for path in paths:
      node = grads
      for key in path.split('/'):
        node = node[key]
      leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(node)]
      assert all(np.isfinite(x).all() for x in leaves), path
      assert all(np.abs(x).max() > 0 for x in leaves), path
    if 'cond' in batch:  # the embedding itself gets a gradient too
      g = np.asarray(jax.grad(lambda c: loss(params, c))(batch['cond']))
      assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_triplet_loss():
  e = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  labels = jnp.asarray([0, 0, 1, 1])
  # Same-label pairs coincide, other labels are sqrt(2) apart: no loss.
  np.testing.assert_allclose(steps.triplet_losses(e, labels), 0.0, atol=1e-5)
  # Swapped labels: d(a, p) = sqrt(2) and d(a, n) in {0, sqrt(2)}: the mean
  # of the two triplets' hinges.
  swapped = jnp.asarray([0, 1, 0, 1])
  m = steps.TRIPLET_MARGIN
  np.testing.assert_allclose(steps.triplet_losses(e, swapped),
                             (np.sqrt(2) + m + m) / 2, rtol=1e-5)
  # Invalid (padding) rows neither count nor are counted.
  valid = jnp.asarray([True, True, True, False])
  out = np.asarray(steps.triplet_losses(e, labels, valid))
  assert out[3] == 0 and out[2] == 0  # anchor 2 lost its only positive


# ------------------------------------------------------------ bad input


def test_bad_conditioning_inputs():
  images = jnp.zeros((2, 5, 6, 1), jnp.int32)
  model = models.ConditionalPixelCNN(**SMALL)
  variables = model.init(jax.random.PRNGKey(0), images, cond=jnp.zeros((2, 8)))
  with pytest.raises(ValueError, match='8-dim vector h'):
    model.apply(variables, images, cond=jnp.zeros((2, 7)))
  with pytest.raises(ValueError, match='pass cond=h'):
    model.apply(variables, images)
  with pytest.raises(ValueError, match='3 rows for 2 images'):
    model.apply(variables, images, cond=jnp.zeros((3, 8)))
  with pytest.raises(ValueError, match=r'shape \(3, 3, 1\) but .* 8-dim '
                     'vector h'):
    model.apply(variables, images, cond=jnp.zeros((2, 3, 3, 1), jnp.int32))
  with pytest.raises(ValueError, match="conditioning='spatial'"):
    model.init(jax.random.PRNGKey(0), images,
               cond=jnp.zeros((2, 3, 3, 1), jnp.int32))
  spatial = models.ConditionalPixelCNN(**SMALL, conditioning='spatial')
  variables = spatial.init(jax.random.PRNGKey(0), images,
                           cond=jnp.zeros((2, 3, 3, 1), jnp.int32))
  with pytest.raises(ValueError, match='1-channel map h'):
    spatial.apply(variables, images, cond=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="'global' or 'spatial'"):
    models.ConditionalPixelCNN(conditioning='both')
  with pytest.raises(ValueError, match='not a conditional model'):
    sampling.decoder_inputs(models.GatedPixelCNN(), {}, jnp.zeros((1, 2)),
                            (5, 6, 1))
  labelled = models.GatedPixelCNN(**SMALL, num_classes=3)
  v = labelled.init(jax.random.PRNGKey(0), images,
                    labels=jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match=r'labels must lie in 0..2'):
    labelled.apply(v, images, labels=jnp.asarray([0, 3]))
  with pytest.raises(ValueError, match='pass labels'):
    labelled.apply(v, images)


def _on_fake_data(config, fake_config, **overrides):
  """``config`` shrunk to the fake dataset and a few steps."""
  for key in ('manual_dir', 'data_dir'):
    config[key] = fake_config[key]
  config.num_train_steps = overrides.get('steps', 2)
  config.eval_every_steps = config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.batch_size = 8
  config.eval_batch_size = 8
  config.microbatches = 0
  config.conv_impl = 'conv'   # no timing of tiny models (test_tuning.py)
  config.sample.during_training = False
  model = config.model
  for key, value in SMALL.items():
    if key in model:
      model[key] = value
  for key in ('encoder_features', 'spatial_hidden', 'spatial_features',
              'features', 'embedding_dim'):
    if key in model and model.name in ('mse_autoencoder', 'embedding_net',
                                       'pixelcnn_autoencoder',
                                       'conditional_pixelcnn'):
      model[key] = min(model[key], 8)
  return config


def test_conditioning_run_must_exist_and_fit(fake_config, tmp_path):
  config = _on_fake_data(fashion_mnist_embedding_pixelcnn.get_config(),
                         fake_config)
  with pytest.raises(ValueError, match='needs a trained run'):
    runs.make_trainer(config)
  config.conditioning.workdir = str(tmp_path / 'missing')
  with pytest.raises(checkpointing.CheckpointError, match='config.json not '
                     'found'):
    runs.make_trainer(config)
  # A run folder with its config but no checkpoint.
  (tmp_path / 'empty').mkdir()
  conditioning.write_config(str(tmp_path / 'empty'),
                            _on_fake_data(fashion_mnist_embedding.get_config(),
                                          fake_config))
  config.conditioning.workdir = str(tmp_path / 'empty')
  with pytest.raises(checkpointing.CheckpointError, match='no checkpoint'):
    runs.make_trainer(config)
  # A trained run of the wrong kind.
  plain = str(tmp_path / 'plain')
  train.train_and_evaluate(fake_config, plain)
  config.conditioning.workdir = plain
  with pytest.raises(ValueError, match='not an embedding network'):
    runs.make_trainer(config)
  # Reading another run never moves its files: a corrupt newest checkpoint
  # is skipped, not moved aside.
  helpers.corrupt(checkpointing.checkpoint_dir(plain) / '4')
  run = runs.load_run(plain, 'test run', 'configs/test.py')
  assert run.step == 2
  assert sorted(os.listdir(checkpointing.checkpoint_dir(plain))) == ['2', '4']
  # Modes that need another kind of model say so.
  with pytest.raises(ValueError, match='needs an auto-encoder'):
    modes.reconstruct_checkpoint(fake_config, plain)
  with pytest.raises(ValueError, match="needs a model conditioned on an "
                     "image's vector h"):
    modes.embed_sample_checkpoint(fake_config, plain)
  config.conditioning.source = 'labels'
  with pytest.raises(ValueError, match='conditioning.source'):
    runs.make_trainer(config)
  bad = _on_fake_data(fashion_mnist_multiscale.get_config('low'), fake_config)
  bad.subsample = 5
  with pytest.raises(ValueError, match='subsample = 5'):
    runs.make_trainer(bad)
  # The Trainer takes the loaded run; nothing below the jobs loads one.
  config.conditioning.source = 'embedding'
  with pytest.raises(ValueError, match='with no conditioning run'):
    train.Trainer(config)


def _pngs(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'samples')))


def test_embedding_conditioning_end_to_end(fake_config, tmp_path):
  emb_dir, dir_ = str(tmp_path / 'embedding'), str(tmp_path / 'pixelcnn')
  emb = _on_fake_data(fashion_mnist_embedding.get_config(), fake_config)
  metrics = train.train_and_evaluate(emb, emb_dir)
  assert 0 <= metrics['triplet_loss'] < 1.0
  assert json.loads((tmp_path / 'embedding' / 'config.json').read_text())[
      'model']['name'] == 'embedding_net'
  config = _on_fake_data(fashion_mnist_embedding_pixelcnn.get_config(),
                         fake_config)
  config.conditioning.workdir = emb_dir
  config.sample.num_samples = 2
  config.sample.num_completions = 2
  config.sample.num_interpolations = 3
  metrics = modes.train_and_evaluate(config, dir_)
  assert 0 < metrics['bits_per_dim'] < 8.5
  modes.embed_sample_checkpoint(config, dir_)
  modes.interpolate_checkpoint(config, dir_)
  assert _pngs(dir_) == ['embed_samples_00000002.png',
                         'interpolation_0_1_00000002.png']
  with pytest.raises(ValueError, match='--mode=complete is for'):
    modes.complete_checkpoint(config, dir_)
  config.sample.interpolate_pair = (0, 99)
  with pytest.raises(ValueError, match='index 99'):
    modes.interpolate_checkpoint(config, dir_)
  # The embedding network is not generative.
  with pytest.raises(ValueError, match='not a generative model'):
    modes.sample_checkpoint(emb, emb_dir)


def test_autoencoder_and_mse_baseline_end_to_end(fake_config, tmp_path):
  mse_dir, ae_dir = str(tmp_path / 'mse'), str(tmp_path / 'ae')
  mse = _on_fake_data(fashion_mnist_autoencoder.get_config('mse'), fake_config)
  assert train.train_and_evaluate(mse, mse_dir)['mse'] > 0
  config = _on_fake_data(fashion_mnist_autoencoder.get_config(), fake_config)
  config.model.conditioning = 'spatial'
  config.sample.num_samples = 2
  config.sample.num_completions = 2
  config.sample.mse_workdir = mse_dir
  train.train_and_evaluate(config, ae_dir)
  path = modes.reconstruct_checkpoint(config, ae_dir)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # 2 rows of: image | MSE reconstruction | 2 samples, 28x28, 2-px gaps, x2.
  assert Image.open(path).size == (2 * (4 * 30 + 2), 2 * (2 * 30 + 2))
  config.sample.mse_workdir = ae_dir
  with pytest.raises(ValueError, match='not an mse_autoencoder'):
    modes.reconstruct_checkpoint(config, ae_dir)


def test_multiscale_end_to_end(fake_config, tmp_path):
  low_dir, high_dir = str(tmp_path / 'low'), str(tmp_path / 'high')
  low = _on_fake_data(fashion_mnist_multiscale.get_config('low'), fake_config)
  low_metrics = train.train_and_evaluate(low, low_dir)
  config = _on_fake_data(fashion_mnist_multiscale.get_config(), fake_config)
  config.conditioning.workdir = low_dir
  config.sample.num_samples = 2
  config.sample.num_completions = 2
  trainer = runs.make_trainer(config)
  # The given pixels (2i, 2j) are left out of the conditional NLL.
  mask = trainer.conditioner.nll_mask((28, 28, 1))
  assert mask.sum() == 28 * 28 - 14 * 14 and not mask[::2, ::2].any()
  metrics = modes.train_and_evaluate(config, high_dir)
  assert metrics['bits_per_dim_low_res'] == pytest.approx(
      low_metrics['bits_per_dim'])
  assert metrics['bits_per_dim_total'] == pytest.approx(
      metrics['bits_per_dim'] + low_metrics['bits_per_dim'] / 4)
  path = modes.sample_checkpoint(config, high_dir)
  assert os.path.exists(path)
