"""Registry of named models, with the original release's names, fields and order.

`MODEL_CONFIGS['ViT-B_16']` is a locked ml_collections.ConfigDict that can be
splatted into the model: `VisionTransformer(num_classes=10, **MODEL_CONFIGS[name])`.
The dict holds exactly the original's ViT names (its tests check that every entry is
in their parameter-count table). Short names (`B/16`, `S/32`, `R50+B/16`) and other
spellings (`b16`, `r50+b16`) resolve through `get_config` / `resolve_name`.
`AUGREG_CONFIGS` names the same configs as the AugReg checkpoints' file names do
(`B_16`, `R_Ti_16`, `R26_S_32`, ...), for the models AugReg published.
"""

import ml_collections

MODEL_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
AUGREG_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
SHORT_NAMES: dict[str, str] = {}

# Registered models without AugReg checkpoints (the original's rule).
_NOT_AUGREG = ("testing", "ViT-L_32", "R50+ViT-B_16", "ViT-H_14")


def _register(get_config):
    """Adds the config built by `get_config` to the registries under its names."""
    config = get_config().lock()
    name = config.model_name
    MODEL_CONFIGS[name] = config
    if name not in _NOT_AUGREG:
        # AugReg file names avoid '+' and 'ViT-' so they work as file names and URIs alike.
        AUGREG_CONFIGS[name.replace("ViT-", "").replace("+", "_")] = config
    if "ViT-" in name and not name.endswith("-gap-norep"):
        SHORT_NAMES[name.replace("ViT-", "").replace("_", "/")] = name
    return get_config


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of a model by its original name or any other spelling, as an unlocked copy."""
    if name not in MODEL_CONFIGS:
        try:
            name = SHORT_NAMES.get(name) or resolve_name(name)
        except KeyError:
            known = ", ".join(MODEL_CONFIGS)
            raise KeyError(f"Unknown model {name!r}. Known models: {known} (or short names like B/16).") from None
    return ml_collections.ConfigDict(MODEL_CONFIGS[name].to_dict())


def _normalise(name: str) -> str:
    return name.lower().replace("vit-", "").replace("/", "").replace("_", "")


def resolve_name(name: str) -> str:
    """Any spelling of a registered model ('b16', 'B/16', 'r50+b16', 'R_Ti_16', 'ViT-B_16') -> its name."""
    lookup = {_normalise(k): k for k in MODEL_CONFIGS}
    lookup.update({_normalise(k): v for k, v in SHORT_NAMES.items()})
    lookup.update({_normalise(k): c.model_name for k, c in AUGREG_CONFIGS.items()})
    if _normalise(name) not in lookup:
        raise KeyError(f"Unknown model {name!r}; e.g. ViT-B_16, b16, B/16, r50+b16.")
    return lookup[_normalise(name)]


def _vit(name, hidden, mlp, heads, layers, patch, dropout=0.0):
    config = ml_collections.ConfigDict()
    config.model_name = name
    config.patches = ml_collections.ConfigDict({"size": (patch, patch)})
    config.hidden_size = hidden
    config.transformer = ml_collections.ConfigDict()
    config.transformer.mlp_dim = mlp
    config.transformer.num_heads = heads
    config.transformer.num_layers = layers
    config.transformer.attention_dropout_rate = 0.0
    config.transformer.dropout_rate = dropout
    config.classifier = "token"
    config.representation_size = None
    return config


def _gap_norep(config, name):
    config.model_name = name
    config.classifier = "gap"
    config.representation_size = None
    return config


def _hybrid(config, name, num_layers, patch=1):
    config.model_name = name
    config.patches.size = (patch, patch)
    config.resnet = ml_collections.ConfigDict()
    config.resnet.num_layers = tuple(num_layers)
    config.resnet.width_factor = 1
    return config


@_register
def get_testing_config():
    """A tiny model for tests (the original's `testing`)."""
    config = _vit("testing", 10, 10, 2, 1, 16, dropout=0.1)
    return config


@_register
def get_testing_unpooled_config():
    """`testing` with per-token logits and no cls token (the original's `testing-unpooled`)."""
    config = get_testing_config()
    config.model_name = "testing-unpooled"
    config.classifier = "unpooled"
    return config


@_register
def get_ti16_config():
    return _vit("ViT-Ti_16", 192, 768, 3, 12, 16)


@_register
def get_s16_config():
    return _vit("ViT-S_16", 384, 1536, 6, 12, 16)


@_register
def get_b16_config():
    return _vit("ViT-B_16", 768, 3072, 12, 12, 16)


@_register
def get_l16_config():
    return _vit("ViT-L_16", 1024, 4096, 16, 24, 16, dropout=0.1)


@_register
def get_h14_config():
    return _vit("ViT-H_14", 1280, 5120, 16, 32, 14, dropout=0.1)


@_register
def get_s16_gap_norep_config():
    return _gap_norep(get_s16_config(), "ViT-S_16-gap-norep")


@_register
def get_b16_gap_norep_config():
    return _gap_norep(get_b16_config(), "ViT-B_16-gap-norep")


@_register
def get_b8_config():
    return _vit("ViT-B_8", 768, 3072, 12, 12, 8)


@_register
def get_s32_config():
    return _vit("ViT-S_32", 384, 1536, 6, 12, 32)


@_register
def get_b32_config():
    return _vit("ViT-B_32", 768, 3072, 12, 12, 32)


@_register
def get_l32_config():
    return _vit("ViT-L_32", 1024, 4096, 16, 24, 32)


@_register
def get_s32_gap_norep_config():
    return _gap_norep(get_s32_config(), "ViT-S_32-gap-norep")


@_register
def get_b32_gap_norep_config():
    return _gap_norep(get_b32_config(), "ViT-B_32-gap-norep")


@_register
def get_r_ti16_config():
    """ResNet root only (stride 4) + 8x8 patches: ViT-Ti at an effective /32 grid."""
    return _hybrid(get_ti16_config(), "R+ViT-Ti_16", (), patch=8)


@_register
def get_r50_b16_config():
    """ResNet-50 with stages (3, 4, 9): stride 2^(1+3) = 16, then 1x1 patches."""
    config = _hybrid(get_b16_config(), "R50+ViT-B_16", (3, 4, 9))
    config.transformer.dropout_rate = 0.1
    return config


@_register
def get_r26_b32_config():
    """ResNet-26 (2, 2, 2, 2): stride 2^(1+4) = 32, then 1x1 patches."""
    return _hybrid(get_b32_config(), "R26+ViT-B_32", (2, 2, 2, 2))


@_register
def get_r26_s32_config():
    return _hybrid(get_s16_config(), "R26+ViT-S_32", (2, 2, 2, 2))


@_register
def get_r50_l32_config():
    return _hybrid(get_l16_config(), "R50+ViT-L_32", (3, 4, 6, 3))
