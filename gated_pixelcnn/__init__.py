"""Gated PixelCNN (van den Oord et al. 2016) and PixelRNN baselines in JAX/Flax."""
