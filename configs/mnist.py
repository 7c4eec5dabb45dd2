"""The `mnist` run recipe, by path: it is vit_jax/recipes/mnist.py
(its docstring has the command and the result), which `--config mnist` also names."""

from vit_jax.recipes.mnist import get_config  # noqa: F401
