"""glmvoice_jax: JAX/TPU-native pretraining of GLM-4-Voice."""

__version__ = "0.1.0"
