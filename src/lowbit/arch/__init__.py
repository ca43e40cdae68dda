from .archmap import ArchMap, LinearGroup
from .lookup import UnsupportedModelError, arch_for, blocks_of, get_module, set_module
from .tables import ARCH_TABLE

__all__ = ["ARCH_TABLE", "ArchMap", "LinearGroup", "UnsupportedModelError", "arch_for",
           "blocks_of", "get_module", "set_module"]
