# The compiled free index (_freeindex_c.pyx): the pure class's interface.
from apportion.core.scheduling.freeindex import FreeIndex as PureFreeIndex

class FreeIndex(PureFreeIndex): ...
