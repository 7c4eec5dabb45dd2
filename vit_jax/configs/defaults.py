"""Shared defaults of every run config; a run config changes only what differs.

Fields whose default is "unset" are declared with `placeholder(type)` so they can
still be set from the command line (`--config.pretrained_path=ViT-B_16.npz`).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data.
    c.dataset = "digits"
    c.train_split = "train"
    c.test_split = "test"
    c.tfds_data_dir = config_dict.placeholder(str)
    c.tfds_manual_dir = config_dict.placeholder(str)
    c.tfds_download = False
    c.pp = ml_collections.ConfigDict()
    c.pp.crop = 224  # model input size
    # Image folders and TFDS datasets are decoded and cropped on the host (vit_jax/data/decode.py):
    # the Inception crop of the full image in training, the whole image in evaluation, resized to
    # `resize` (unset: `crop`); the device resizes to `crop` where the two differ (tiny images
    # such as CIFAR's 32 px, upsampled on the device). Held-in-memory sources (digits, IDX files,
    # small TFDS datasets of fixed-size images) are cropped on the device and ignore `resize`.
    c.pp.resize = config_dict.placeholder(int)
    c.pp.area_min = 0.05  # Inception crop: 5% to 100% of the area; 1.0 = no crop
    c.pp.flip = True
    # Evaluation of host-decoded images: 0 resizes the whole image (the original's); a fraction
    # takes timm's centre crop, e.g. 0.875 (the resize-to-256-then-crop-224 of ImageNet models).
    c.pp.eval_crop_pct = 0.0
    c.pp.channels = 3  # 1-channel data is repeated to 3 for RGB models
    # Input normalisation (x / 255 - mean) / std per channel; unset: the original's [-1, 1]. A timm
    # or transformers checkpoint brings its own (CLIP, DINOv2 and SigLIP do not take [-1, 1]).
    c.pp.mean = config_dict.placeholder(tuple)
    c.pp.std = config_dict.placeholder(tuple)
    # Augmentation of training images, on the device inside the train step (vit_jax/augment.py);
    # every one is off by default. `pad`: pixels of black border added before the crop (with
    # area_min=1 a random crop of the original size: the classic pad-and-crop of tiny images).
    # `randaug`: big_vision's RandAugment, AugReg's `randaug(num_layers, magnitude)`; 0 layers = off.
    # `erase_prob`: probability of one random-erasing box (timm's RandomErasing, per-pixel noise).
    c.pp.pad = 0
    c.pp.randaug = ml_collections.ConfigDict({"num_layers": 0, "magnitude": 10.0})
    c.pp.erase_prob = 0.0
    # Mixup (big_vision's: one Beta(alpha, alpha) weight per batch, partner = the next example)
    # and CutMix (timm's box); with both, CutMix with probability switch_prob; applied to a
    # batch (to each micro-batch with accum_steps) with probability `prob`. alpha 0 = off.
    c.mixup = ml_collections.ConfigDict({"alpha": 0.0, "cutmix_alpha": 0.0, "switch_prob": 0.5, "prob": 1.0})
    # Train on a fixed class-balanced subset of this many examples (data-size ablations);
    # the subset depends on `train_subset_seed`, not on `seed`, so every run sees the same one.
    c.train_examples = config_dict.placeholder(int)
    c.train_subset_seed = 0
    # Processes that decode image folders and TFDS datasets (unset: one per core, at most 32;
    # 0: decode in the training process itself, without prefetching).
    c.data_workers = config_dict.placeholder(int)

    # Model: a registered name (vit_jax.configs.models), then any field in `model`
    # that is set overrides it. Without a name, `model` must define the whole model.
    c.model_name = config_dict.placeholder(str)
    c.model = ml_collections.ConfigDict()
    c.model.hidden_size = config_dict.placeholder(int)
    c.model.patches = ml_collections.ConfigDict({"size": config_dict.placeholder(tuple)})
    c.model.transformer = ml_collections.ConfigDict()
    for field in ("mlp_dim", "num_heads", "num_layers"):
        c.model.transformer[field] = config_dict.placeholder(int)
    for field in ("dropout_rate", "attention_dropout_rate"):
        c.model.transformer[field] = config_dict.placeholder(float)
    c.model.classifier = config_dict.placeholder(str)
    c.model.representation_size = config_dict.placeholder(int)
    # Hybrid: a ResNet stem (root, then bottleneck stages of these sizes; () = root only,
    # stride 4) feeds the encoder. Unset num_layers = a pure ViT, unless model_name is a hybrid.
    c.model.resnet = ml_collections.ConfigDict(
        {"num_layers": config_dict.placeholder(tuple), "width_factor": config_dict.placeholder(float)}
    )
    # Weight standardisation and GroupNorm numerics (unset: the original's; timm's hybrids bring theirs).
    c.model.resnet.ws_epsilon = config_dict.placeholder(float)
    c.model.resnet.ws_epsilon_in_sqrt = config_dict.placeholder(bool)
    c.model.resnet.gn_epsilon = config_dict.placeholder(float)
    c.model.posemb = config_dict.placeholder(str)
    c.model.droppath_rate = config_dict.placeholder(float)
    # Patch dropout in training (timm's patch_drop_rate): each image keeps a random subset of
    # its patch tokens; see also full_token_steps.
    c.model.patch_drop_rate = config_dict.placeholder(float)
    c.model.remat = config_dict.placeholder(str)
    c.model.scan = config_dict.placeholder(bool)
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.head_bias_init = config_dict.placeholder(float)
    # Numerics of weights from other codebases (unset: the registered model's, else the original's;
    # a pretrained timm or transformers checkpoint brings its own).
    c.model.layernorm_epsilon = config_dict.placeholder(float)
    c.model.gelu_approximate = config_dict.placeholder(bool)
    c.model.fc_norm = config_dict.placeholder(bool)
    # The later families' pieces (README, Models; unset: the original's behaviour, or what a
    # pretrained timm or transformers checkpoint brings).
    c.model.activation = config_dict.placeholder(str)  # gelu_tanh | gelu | quick_gelu
    c.model.class_token = config_dict.placeholder(bool)
    c.model.reg_tokens = config_dict.placeholder(int)
    c.model.distilled = config_dict.placeholder(bool)
    c.model.posemb_prefix = config_dict.placeholder(bool)
    c.model.pre_norm = config_dict.placeholder(bool)
    c.model.patch_bias = config_dict.placeholder(bool)
    c.model.layerscale_init = config_dict.placeholder(float)
    c.model.mlp_type = config_dict.placeholder(str)  # mlp | swiglu | swiglu_norm
    c.model.qk_norm = config_dict.placeholder(bool)
    c.model.rope = config_dict.placeholder(bool)
    c.model.rope_ref_grid = config_dict.placeholder(tuple)
    c.model.key_bias = config_dict.placeholder(bool)
    c.model.patch_floor = config_dict.placeholder(bool)  # leave out the pixels past the last whole patch
    c.model.dtype = "float32"  # computation; parameters stay float32
    # A checkpoint to start from: an original .npz (local or gs://), a timm or transformers model
    # directory, or hf-hub:ORG/NAME (vit_jax.pretrained).
    c.pretrained_path = config_dict.placeholder(str)
    c.pretrained_dir = config_dict.placeholder(str)  # with model_name: DIR/<model_name>.npz
    # Parameters a fine-tune takes from its fresh initialisation instead of the checkpoint: path
    # prefixes such as "Transformer/posembed_input" (what interpolated embeddings are worth).
    c.pretrained_fresh = ()
    # Keep the checkpoint's head instead of a fresh one: a fine-tune of the same task, e.g. at a
    # higher resolution (experiments/resolution.py).
    c.pretrained_keep_head = False

    # Optimisation. `batch` is the global batch over all devices and hosts.
    c.batch = 512
    c.eval_batch = config_dict.placeholder(int)  # default: batch
    c.accum_steps = 1
    c.total_steps = 10_000
    c.epochs = config_dict.placeholder(float)  # if set, overrides total_steps
    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd | adam | adamw (adam* use decoupled weight decay)
    c.optim.momentum = 0.9
    c.optim.mu_dtype = "float32"  # dtype of the momentum / first-moment accumulator
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    # "optax": weight_decay multiplies the learning rate (optax.adamw, PyTorch's AdamW; for sgd it
    # is added to the gradient) and decays every parameter with more than one dimension.
    # "augreg": AugReg's and big_vision's: decoupled decay weight_decay * lr(t) of the kernels only
    # (not biases, norms, position embedding or cls), added after the optimizer and layer decay,
    # for sgd and adam alike (AugReg's wd 0.1 at lr 1e-3 is big_vision's config.wd = 1e-4).
    c.optim.wd_convention = "optax"
    # Layer-wise learning-rate decay for fine-tuning (BEiT, MAE): block i of L gets
    # layer_decay ** (L - i), the embeddings layer_decay ** (L + 1), the final norm and head 1.
    c.optim.layer_decay = 1.0
    c.lr = ml_collections.ConfigDict()
    c.lr.base = 0.03
    c.lr.warmup_steps = 500
    c.lr.decay = "cosine"  # cosine | linear | constant
    c.lr.end = 0.0
    c.grad_clip_norm = 1.0  # global norm; 0 disables
    c.label_smoothing = 0.0
    # With patch dropout (model.patch_drop_rate), the last this many steps train on every patch
    # token, so the model meets the full token count it is evaluated on (FLIP's unmasked tuning).
    c.full_token_steps = 0
    # Their learning rate: 0 continues the run's schedule; a positive rate gives them a schedule
    # of their own (the rest of the run decays over the steps before them, then this rate decays
    # by cosine to 0 over the full-token steps), as FLIP's separate unmasked tuning.
    c.full_token_lr = 0.0
    # Micro-batches of the full-token step (0: accum_steps). Every token doubles the work of an
    # image at patch_drop_rate 0.5, and on CPU the fastest micro-batch holds a fixed number of
    # tokens (BENCHMARKS.md, "Patch dropout"), so the full-token step may want twice as many.
    c.full_token_accum_steps = 0
    # An exponential moving average of the parameters, updated after every step (0 = off). When
    # set it is what the run evaluates, few-shots and exports (model.npz); the checkpoints hold
    # it beside the parameters. `ema_warmup` uses min(ema_decay, (1 + t) / (10 + t)) at step t,
    # as TensorFlow's ExponentialMovingAverage with num_updates does, so short runs forget the
    # initialisation.
    c.ema_decay = 0.0
    c.ema_warmup = False

    # Devices: the mesh's named axes ((name, size), one size may be -1 = the rest). The batch
    # is split over `data` and `fsdp`; parameters are replicated (`sharding="replicate"`) or
    # split over `fsdp` with their optimizer state (`sharding="fsdp"`, arrays of at least
    # `fsdp_min_size` elements). `sharding_rules`: (regex, spec) pairs tried first, first
    # match wins; spec 'replicate', 'fsdp' or a tuple of axis names / None per dimension.
    c.mesh = (("data", -1),)
    # On a CPU host: split the CPU into this many single-threaded devices before JAX starts
    # (vit_jax.devices; the flag --cpu_devices wins). Unset: XLA's default, one device.
    c.cpu_devices = config_dict.placeholder(int)
    c.sharding = "replicate"
    c.sharding_rules = ()
    c.fsdp_min_size = 2**14

    # Logging, evaluation, checkpoints.
    c.progress_every = 100
    c.eval_every = 1000
    # Test-time augmentation of the final evaluation (the ones every eval_every stay one view):
    # the mean of the softmax probabilities over every translation by -shift..shift whole pixels
    # (black border, as pad-and-crop) and, with `flip`, their mirror images: (2 * shift + 1)^2
    # views, twice that with flip, each a forward pass. The plain image's accuracy is reported
    # beside it (`accuracy_1view`). Off by default.
    c.tta = ml_collections.ConfigDict({"flip": False, "shift": 0})
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    # A step with a non-finite loss or gradient stops the run (the last good checkpoint
    # stays the newest); True skips that step's update instead and logs it.
    c.skip_nonfinite_steps = False
    # Few-shot linear accuracy and kNN of the frozen pre-logits during training (the paper's
    # protocol, vit_jax/evaluators.py), every `fewshot.every` steps (unset: off), on `datasets`
    # (anything config.dataset accepts; empty: the run's own), each read as its `train_split`
    # (the pool the shots are drawn from, and kNN's memory) and `test_split`.
    c.fewshot = ml_collections.ConfigDict()
    c.fewshot.every = config_dict.placeholder(int)
    c.fewshot.datasets = ()
    c.fewshot.train_split = "train"
    c.fewshot.test_split = "test"
    c.fewshot.shots = (1, 5, 10, 25)
    c.fewshot.seeds = (0, 1, 2)
    c.fewshot.l2_reg = 2.0**10
    # Also write the original release's flax checkpoint WORKDIR/checkpoint_<step> (parameters,
    # optimizer state, step) at the end, as its train_and_evaluate did; set for its configs.
    c.flax_checkpoint = False
    return c


def small_vit(c: ml_collections.ConfigDict, *, hidden: int, mlp: int, heads: int, layers: int, patch: int):
    """A from-scratch ViT with the AdamW recipe the small-image configs share.

    No dropout (the data augmentation and weight decay regularise), token head,
    AdamW with lr 1e-3 and weight decay 0.05 on kernels, cosine decay, label
    smoothing 0.1. The run config then sets data, batch, steps and intervals.
    """
    c.model.hidden_size = hidden
    c.model.patches.size = (patch, patch)
    c.model.transformer.mlp_dim = mlp
    c.model.transformer.num_heads = heads
    c.model.transformer.num_layers = layers
    c.model.transformer.dropout_rate = 0.0
    c.model.transformer.attention_dropout_rate = 0.0
    c.model.classifier = "token"
    c.optim.name = "adamw"
    c.optim.weight_decay = 0.05
    c.lr.base = 1e-3
    c.label_smoothing = 0.1
    return c
