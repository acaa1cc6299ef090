"""Sequence models. Each module defines its config dataclass and a `build_*` function; `MODELS` maps the
`model.arch` name of a configuration to both."""

from crossway.models.interface import Memory, Seq2Seq, State, select_batch
from crossway.models.rnn import RNNConfig, build_rnn
from crossway.models.transformer import TransformerConfig, build_transformer

MODELS = {"rnn": (RNNConfig, build_rnn), "transformer": (TransformerConfig, build_transformer)}

__all__ = ["MODELS", "Memory", "RNNConfig", "Seq2Seq", "State", "TransformerConfig", "build_rnn",
           "build_transformer", "select_batch"]
