"""The `cifar10_subset` run recipe, by path: it is vit_jax/recipes/cifar10_subset.py
(its docstring has the command and the result), which `--config cifar10_subset` also names."""

from vit_jax.recipes.cifar10_subset import get_config  # noqa: F401
