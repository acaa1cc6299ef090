"""Sequence models. Each module defines its config dataclass and a `build_*` function; `MODELS` maps the
`model.arch` name of a configuration to both."""

from crossway.models.interface import Memory, Seq2Seq, State, select_batch
from crossway.models.rnn import RNNConfig, build_rnn
from crossway.models.sat import SATConfig, build_sat
from crossway.models.transformer import TransformerConfig, build_transformer
from crossway.models.unet import UNetConfig, build_unet

# model.arch -> (config class, builder(config, src size, tgt size)): sizes are vocabularies for sequence models,
# image channels and vocabulary for Show-Attend-Tell, input channels and classes for U-Net
MODELS = {"rnn": (RNNConfig, build_rnn), "transformer": (TransformerConfig, build_transformer),
          "sat": (SATConfig, build_sat), "unet": (UNetConfig, build_unet)}

__all__ = ["MODELS", "Memory", "RNNConfig", "SATConfig", "Seq2Seq", "State", "TransformerConfig", "UNetConfig",
           "build_rnn", "build_sat", "build_transformer", "build_unet", "select_batch"]
