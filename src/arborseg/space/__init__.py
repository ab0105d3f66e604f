"""Search spaces: YAML -> validated SearchSpace -> sampled ModuleTree. No torch import here."""

from arborseg.space.catalog import MODULE_SPECS, ModuleSpec, ParamSpec, register_module_spec
from arborseg.space.loader import SearchSpace, load_space, parse_space
from arborseg.space.values import FixedDraw, RandomDraw

__all__ = ["MODULE_SPECS", "ModuleSpec", "ParamSpec", "register_module_spec", "SearchSpace", "load_space",
           "parse_space", "FixedDraw", "RandomDraw"]
