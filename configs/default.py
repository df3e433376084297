"""Default: an unconditional Gated PixelCNN on Fashion-MNIST (28x28x1).

Sized to train in about an hour on a 2-core CPU (3,200 steps of batch 32,
about 1 s each, with two full test-split evaluations); longer runs:
--config.num_train_steps=N (the cosine schedule stretches to N). The paper
setups are in imagenet64.py, imagenet32.py and cifar10.py; they train with
the paper's RMSProp. This one trains with Adam at 4e-3, which reached a
lower test bits/dim than RMSProp at 1e-3 on the same budget (bench/recipe.py,
docs/recipe.md).
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_model_config() -> ml_collections.ConfigDict:
  """Architecture of the default model (`gated_pixelcnn.models`)."""
  model = ml_collections.ConfigDict()
  # 'gated_pixelcnn' or 'pixelcnn' (the PixelRNN paper's baseline).
  model.name = 'gated_pixelcnn'
  model.num_layers = 8
  # Hidden units p per stack; a multiple of num_channels (colour groups).
  model.features = 48
  model.kernel_size = 5
  # The first layer plays mask A's role and, as in PixelCNN, sees a 7x7 window.
  model.first_kernel_size = 7
  model.num_channels = 1
  # > 0 makes the model class-conditional on the dataset labels.
  model.num_classes = 0
  # Width of the ReLU-1x1 output head before the 256-way logits. 256 costs
  # 8% more per step than 64 but gives the softmax a full-rank input.
  model.head_features = 256
  # Compute dtype: 'float32', or 'bfloat16' on TPU/GPU.
  model.dtype = 'float32'
  return model


def decoder_config(name: str, **fields) -> ml_collections.ConfigDict:
  """A conditional model's config: ``name``, the default model's Gated
  PixelCNN fields (its decoder), then ``fields``."""
  model = ml_collections.ConfigDict()
  model.name = name
  default = get_model_config()
  for key in ('num_layers', 'features', 'kernel_size', 'first_kernel_size',
              'num_channels', 'head_features', 'dtype'):
    model[key] = default[key]
  model.update(fields)
  return model


def rmsprop(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with the paper's optimizer, RMSProp at 1e-3 (cosine, 100
  warm-up steps): what the Fashion-MNIST baseline and conditional configs
  were trained and measured with (docs/pixelrnn.md, docs/conditional.md)."""
  config.optimizer = 'rmsprop'
  config.learning_rate = 1e-3
  return config


def get_config() -> ml_collections.ConfigDict:
  """Fashion-MNIST, read offline from Debian's dataset-fashion-mnist."""
  config = ml_collections.ConfigDict()
  # A name from gated_pixelcnn.input_pipeline.SPECS.
  config.dataset = 'fashion_mnist'
  # TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets).
  config.data_dir = placeholder(str)
  # Folder of local source files to prepare the dataset from when it is not
  # prepared yet (None: the dataset's default, e.g. Debian's Fashion-MNIST).
  config.manual_dir = placeholder(str)
  # Let TFDS download the dataset if it is missing (needs internet).
  config.download = False
  config.model = get_model_config()
  # A pretrained folder (gated_pixelcnn.pretrained) to take the parameters
  # from instead of --workdir's checkpoints; set by its config.py.
  config.pretrained = placeholder(str)

  # Global batch sizes, split over all devices of all processes.
  config.batch_size = 32
  config.eval_batch_size = 256
  config.num_train_steps = 3_200
  # 'rmsprop' (the paper's), 'adam' or 'adamw'.
  config.optimizer = 'adam'
  config.learning_rate = 4e-3
  # 'constant', 'cosine' (decay to 0 at num_train_steps) or 'wsd' (constant,
  # then linear decay to 0 over the last decay_fraction of the steps), after
  # a linear warm-up of warmup_steps.
  config.lr_schedule = 'cosine'
  config.decay_fraction = 0.2
  # RMSProp's second-moment estimate starts at zero: warm up the step size.
  config.warmup_steps = 100
  config.rmsprop_decay = 0.95
  config.rmsprop_eps = 1e-6
  # optimizer = 'adamw': decoupled weight decay.
  config.weight_decay = 0.0
  # Clip gradients to this global norm (0: off).
  config.grad_clip_norm = 0.0
  # Evaluate with an exponential moving average of the parameters (0: off).
  config.ema_decay = 0.0

  config.log_every_steps = 50
  config.eval_every_steps = 1_600
  config.checkpoint_every_steps = 500
  config.max_to_keep = 3
  # Train on images subsampled by this factor (pixels (f*i, f*j)): the
  # low-resolution model of multi-scale generation. 1: full size.
  config.subsample = 1
  # What a conditional_pixelcnn is conditioned on, from another trained run
  # (gated_pixelcnn.conditioning): '' (nothing: unconditional, or labels via
  # model.num_classes, or the auto-encoder's own encoder), 'embedding' (a
  # trained embedding_net's output) or 'subsample' (multi-scale: the image
  # subsampled like a trained low-resolution model's data). workdir: that
  # run's folder.
  config.conditioning = ml_collections.ConfigDict()
  config.conditioning.source = ''
  config.conditioning.workdir = placeholder(str)
  # FSDP style: split every parameter array of shard_params_min_size
  # elements or more (with its optimizer state and EMA) over all devices,
  # for models too big to replicate; smaller arrays stay replicated.
  config.shard_params = False
  config.shard_params_min_size = 2**18
  # On a CPU-only host: data-parallel over this many virtual CPU devices
  # (0: one per core, as many as divide the batch sizes; 1: one device).
  # One device per core trains 1.1-1.3x faster on XLA:CPU (bench/train.py).
  # Ignored on TPU/GPU, where the accelerators are the devices.
  config.cpu_devices = 0
  # Process each device's part of the batch in this many equal parts in
  # sequence and average their gradients (the same update). 0 (auto): on a
  # CPU, the fewest parts of at most 8,192 pixels per device, which XLA:CPU
  # runs in cache (2 parts of 8 images per core here: ~6% faster; at 64x64,
  # 1.3x, bench/train.py); on TPU/GPU 1.
  config.microbatches = 0
  # How the convolutions compute, for speed only (the same function and
  # parameters): 'conv' (XLA's convolution), 'im2col' (one matmul over the
  # open taps' patches) or 'taps' (a matmul per tap). 'auto': on a CPU the
  # fastest of the three for this machine and shape, measured when training
  # starts (a few seconds) and cached (gated_pixelcnn.tuning); elsewhere
  # 'conv'.
  config.conv_impl = 'auto'
  # Steps traced by clu's profiler, 10 steps after (re)start (0: off).
  config.num_profile_steps = 0
  config.seed = 0

  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 16
  # 'cached' (fast) or 'naive' (full recompute per sub-pixel, the reference).
  config.sample.method = 'cached'
  # Softmax temperature; 0 takes the most likely value of every sub-pixel.
  config.sample.temperature = 1.0
  config.sample.seed = 0
  # Write a grid of num_samples samples to TensorBoard and DIR/samples/ at
  # every evaluation during training.
  config.sample.during_training = True
  # --mode=complete: rows observed (None: the top half) and completions of
  # each of num_samples test images.
  config.sample.observed_rows = placeholder(int)
  config.sample.num_completions = 3
  # --mode=reconstruct of a PixelCNN auto-encoder: the workdir of the MSE
  # auto-encoder baseline shown next to it (None: no baseline column).
  config.sample.mse_workdir = placeholder(str)
  # --mode=interpolate: two test-split indices and points on the line.
  config.sample.interpolate_pair = (0, 1)
  config.sample.num_interpolations = 8

  # --mode=compress / decompress (gated_pixelcnn.compression): lossless
  # coding with the model's conditionals. input: an image file, a folder of
  # images, or tfds:SPLIT of the dataset (compress); a .gpx file or a folder
  # of them (decompress). output: the .gpx file (compress), or a new folder
  # (decompress: PNGs; compress with per_image: one .gpx per image).
  config.compress = ml_collections.ConfigDict()
  config.compress.input = ''
  config.compress.output = ''
  # Code only the first num_images inputs (0: all).
  config.compress.num_images = 0
  # One small file per image (any size; gated_pixelcnn.container's compact
  # format) instead of one file for all.
  config.compress.per_image = False
  # One-image files are coded this many at a time, in a batch of this fixed
  # shape (a power of two); decoding one file runs one such batch.
  config.compress.file_batch = 64
  # Images coded together in one batch and range-coder stream; a file is
  # decoded with the batch size it was written with.
  config.compress.batch_size = 256
  # Checkpoint step of the model that compresses (None: the newest).
  # Decompress always uses the step a file names.
  config.compress.step = placeholder(int)
  return config
