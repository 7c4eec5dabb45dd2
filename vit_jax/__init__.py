"""vit_jax: Vision Transformer research code in JAX/Flax."""
