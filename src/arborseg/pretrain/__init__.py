"""Self-supervised pre-training of encoders on unlabeled EM (MoCo v2, as CEM500K) for trees' ``init``."""

from arborseg.pretrain.config import PretrainConfig, load_pretrain_config

__all__ = ["PretrainConfig", "load_pretrain_config"]
