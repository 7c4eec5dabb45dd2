"""The `fashion_mnist_patchdrop` run recipe, by path: it is vit_jax/recipes/fashion_mnist_patchdrop.py
(its docstring has the command and the result), which `--config fashion_mnist_patchdrop` also names."""

from vit_jax.recipes.fashion_mnist_patchdrop import get_config  # noqa: F401
