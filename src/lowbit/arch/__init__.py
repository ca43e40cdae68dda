from .archmap import FEEDER_KINDS, ArchMap, LinearGroup
from .lookup import UnsupportedModelError, arch_for, blocks_of, get_module, set_module
from .tables import ARCH_TABLE, ARCH_VARIANTS

__all__ = ["ARCH_TABLE", "ARCH_VARIANTS", "FEEDER_KINDS", "ArchMap", "LinearGroup",
           "UnsupportedModelError", "arch_for", "blocks_of", "get_module", "set_module"]
