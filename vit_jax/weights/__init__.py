"""Published weights: their formats, layouts, readers and writers.

    npz.py           the original release's .npz format and the parameter-tree helpers
    layouts.py       timm's names and shapes (every family) and transformers' ViT, to and from our tree
    hf_layouts.py    transformers' DINOv2, CLIP, SigLIP and DeiT layouts
    hf_configs.py    transformers' config defaults per model type, our fields, their preprocessing
    families.py      the timm architecture names of the later families, as our fields
    architectures.py the fields weights describe, and the check that they fit a name
    resample.py      position embeddings resampled as each library resamples them
    readers.py       `load`: .npz, timm and transformers directories, .safetensors, hf-hub: ids
    writers.py       `export`: back to .npz, timm's or transformers' layout

`vit_jax.pretrained` is the public face of the readers and writers; `vit_jax.checkpoint`
keeps the original release's functions (the .npz format re-exported, fine-tuning surgery).
"""
