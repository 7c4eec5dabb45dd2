"""The `pretrain` run recipe, by path: it is vit_jax/recipes/pretrain.py
(its docstring has the command and the result), which `--config pretrain` also names."""

from vit_jax.recipes.pretrain import get_config  # noqa: F401
