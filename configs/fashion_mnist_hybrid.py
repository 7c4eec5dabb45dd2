"""The `fashion_mnist_hybrid` run recipe, by path: it is vit_jax/recipes/fashion_mnist_hybrid.py
(its docstring has the command and the result), which `--config fashion_mnist_hybrid` also names."""

from vit_jax.recipes.fashion_mnist_hybrid import get_config  # noqa: F401
