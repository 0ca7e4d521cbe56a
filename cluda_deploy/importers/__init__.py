"""Importers of checkpoints written by other code bases (``cluda import``).

* :mod:`.archs`: the released architectures (torch-free, for the CLI's choices);
* :mod:`.reader`: reading an mmseg 0.x / mmcv 1.x ``.pth`` without executing code, its three
  forms and UDA prefixes;
* :mod:`.keymap`: mmseg MiT -> transformers SegFormer keys (kv split), decode heads 1:1;
* :mod:`.mmseg`: strict conversion and :func:`~cluda_deploy.importers.mmseg.import_mmseg`.

Only the torch-free registry is imported here; ``from cluda_deploy.importers.mmseg import
import_mmseg`` loads the rest.
"""

from cluda_deploy.importers.archs import ARCHS, MMSegArch, arch_names, get_arch

__all__ = ["ARCHS", "MMSegArch", "arch_names", "get_arch"]
