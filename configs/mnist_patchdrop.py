"""The `mnist_patchdrop` run recipe, by path: it is vit_jax/recipes/mnist_patchdrop.py
(its docstring has the command and the result), which `--config mnist_patchdrop` also names."""

from vit_jax.recipes.mnist_patchdrop import get_config  # noqa: F401
