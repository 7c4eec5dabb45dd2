"""The run recipes, one module per experiment: `get_config()` returns its run config, and the
docstring gives the command and the measured result. They ship with the package, so after
`pip install` a recipe is named by its module: `python -m vit_jax.main --config quickstart`,
`--config vit:b16,cifar10` (`vit_jax.config.recipe_path`). In the repository, `configs/NAME.py`
names the same recipe by path."""
