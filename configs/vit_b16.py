"""The `vit_b16` run recipe, by path: it is vit_jax/recipes/vit_b16.py
(its docstring has the command and the result), which `--config vit_b16` also names."""

from vit_jax.recipes.vit_b16 import get_config  # noqa: F401
