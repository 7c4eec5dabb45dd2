"""The `vit` run recipe, by path: it is vit_jax/recipes/vit.py
(its docstring has the command and the result), which `--config vit` also names."""

from vit_jax.recipes.vit import get_config  # noqa: F401
