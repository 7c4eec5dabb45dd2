"""The `mnist_augreg` run recipe, by path: it is vit_jax/recipes/mnist_augreg.py
(its docstring has the command and the result), which `--config mnist_augreg` also names."""

from vit_jax.recipes.mnist_augreg import get_config  # noqa: F401
