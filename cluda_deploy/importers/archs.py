"""The released architectures ``cluda import mmseg`` knows (torch-free, so the CLI lists them
without importing torch).

Each maps to one of our presets (same network, same test protocol) and names the decode-head
children that exist in the file only for training and are dropped on import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MMSegArch:
    """One released model family (shared/fixtures/mmseg_checkpoints/README.md)."""

    name: str
    preset: str  # our preset with the same network and test protocol
    method: str  # provenance: the paper the weights come from
    # decode_head children used only by the training loss (CLUDA's feat_weighter): name ->
    # number of outputs of that ConvFusionHead; checked, then dropped.
    training_heads: tuple[tuple[str, int], ...] = ()
    # mmseg config file the layout was derived from (for messages and provenance).
    reference: str = ""


ARCHS: dict[str, MMSegArch] = {
    arch.name: arch
    for arch in (
        MMSegArch(
            "daformer-mitb5", "daformer-mitb5", "daformer",
            reference="lhoyer/DAFormer gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py",
        ),
        MMSegArch("hrda-mitb5", "hrda-mitb5", "hrda", reference="lhoyer/HRDA gtaHR2csHR_hrda.py"),
        MMSegArch(
            "mic-hrda-mitb5", "hrda-mitb5", "mic", reference="lhoyer/MIC gtaHR2csHR_mic_hrda.py"
        ),
        MMSegArch(
            "cluda-hrda-mitb5", "cluda-hrda-mitb5", "cluda",
            training_heads=(("feat_weighter", 1),),
            reference="user0407/CLUDA gtaHR2csHR_hrda.py (daformer_conv1_mitb5.py, embed 512)",
        ),
    )
}  # fmt: skip


def arch_names() -> list[str]:
    return list(ARCHS)


def get_arch(name: str) -> MMSegArch:
    if name not in ARCHS:
        raise ValueError(f"unknown --arch {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[name]
