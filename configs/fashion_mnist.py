"""The `fashion_mnist` run recipe, by path: it is vit_jax/recipes/fashion_mnist.py
(its docstring has the command and the result), which `--config fashion_mnist` also names."""

from vit_jax.recipes.fashion_mnist import get_config  # noqa: F401
