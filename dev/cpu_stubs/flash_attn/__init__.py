"""CPU import stand-in for flash_attn (names openrlhf.models.ring_attn_utils imports); see gd2po_cpu_standin.

There is deliberately no flash_attn.ops: openrlhf falls back to torch when that import fails.
"""

__version__ = "0.0.0+cpu.standin"
GD2PO_CPU_STANDIN = True
