"""The `ablation` run recipe, by path: it is vit_jax/recipes/ablation.py
(its docstring has the command and the result), which `--config ablation` also names."""

from vit_jax.recipes.ablation import get_config  # noqa: F401
