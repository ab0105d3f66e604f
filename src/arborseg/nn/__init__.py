"""Networks: the module registry (blocks) and the builder (ModuleTree -> nn.Module)."""

from arborseg.nn.blocks import BUILDERS, register_builder
from arborseg.nn.builder import (
    ArborNet,
    build_network,
    check_window,
    count_flops,
    count_parameters,
    forward_gflops,
    network_summary,
    uses_image_facts,
    window_multiple,
)
from arborseg.nn.crf import ImageFacts

__all__ = ["BUILDERS", "register_builder", "ArborNet", "build_network", "check_window", "count_flops",
           "count_parameters", "forward_gflops", "network_summary", "window_multiple",
           "ImageFacts", "uses_image_facts"]
