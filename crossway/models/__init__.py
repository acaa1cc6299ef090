"""Sequence models. Each module defines its config dataclass and a `build_*` function; `MODELS` maps the
`model.arch` name of a configuration to both."""

from crossway.models.decoder_only import DecoderOnlyConfig, build_decoder_only
from crossway.models.gnmt import GNMTConfig, build_gnmt
from crossway.models.interface import Memory, Seq2Seq, State, select_batch
from crossway.models.las import LASConfig, build_las
from crossway.models.rnn import RNNConfig, build_rnn
from crossway.models.sat import SATConfig, build_sat
from crossway.models.speech import WhisperConfig, build_whisper
from crossway.models.transformer import TransformerConfig, build_transformer
from crossway.models.unet import UNetConfig, build_unet

# model.arch -> (config class, builder(config, src size, tgt size)): sizes are vocabularies for sequence models,
# image channels and vocabulary for Show-Attend-Tell, mel bins and vocabulary for speech models (whisper, las),
# input channels and classes for U-Net
MODELS = {"rnn": (RNNConfig, build_rnn), "transformer": (TransformerConfig, build_transformer),
          "sat": (SATConfig, build_sat), "unet": (UNetConfig, build_unet),
          "whisper": (WhisperConfig, build_whisper), "las": (LASConfig, build_las),
          "decoder_only": (DecoderOnlyConfig, build_decoder_only), "gnmt": (GNMTConfig, build_gnmt)}

__all__ = ["DecoderOnlyConfig", "GNMTConfig", "LASConfig", "MODELS", "Memory", "RNNConfig", "SATConfig", "Seq2Seq",
           "State", "TransformerConfig", "UNetConfig", "WhisperConfig", "build_decoder_only", "build_gnmt",
           "build_las", "build_rnn", "build_sat", "build_transformer", "build_unet", "build_whisper", "select_batch"]
