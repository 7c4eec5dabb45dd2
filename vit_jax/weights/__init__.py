"""Published weights: their formats, layouts, readers and writers.

    npz.py      the original release's .npz format and the parameter-tree helpers
    layouts.py  timm's and transformers' names and shapes, to and from our tree
    readers.py  `load`: .npz, timm and transformers directories, .safetensors, hf-hub: ids
    writers.py  `export`: back to .npz, timm's or transformers' layout

`vit_jax.pretrained` is the public face of the readers and writers; `vit_jax.checkpoint`
keeps the original release's functions (the .npz format re-exported, fine-tuning surgery).
"""
