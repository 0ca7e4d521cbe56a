"""CONFETI ("Contrast, Stylize and Adapt", Li et al., CVPRW 2023): its own parts, each a small
module with one job (research/confeti.md):

* ``style_nets`` / ``style_losses`` / ``style``: the CUT translator (G, D, F), LSGAN and PatchNCE,
  the translator's Adam;
* ``heads``: projection head (512-d), CAM head and its loss, ``reg_proj``;
* ``prototypes``: the cross-domain class prototypes and their CAM-weighted momentum update;
* ``proto_contrast``: pixel-to-prototype InfoNCE and the SePiCo regulariser;
* ``consistency``: prototypical semantic consistency, the generator's semantic loss;
* ``freeze``: passes whose gradient flows through a network but not into it.

The self-training around them (EMA teacher, pseudo-labels, ClassMix, augmentation) is DAFormer's,
shared with ``dacs``/``cluda`` (``training/methods``).
"""
