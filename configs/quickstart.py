"""The `quickstart` run recipe, by path: it is vit_jax/recipes/quickstart.py
(its docstring has the command and the result), which `--config quickstart` also names."""

from vit_jax.recipes.quickstart import get_config  # noqa: F401
