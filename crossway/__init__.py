"""crossway: encoder-decoder models in PyTorch. The CLI and the server only call what is exported here."""

from crossway.api import Model, load
from crossway.config import RunConfig, decode_overrides, load_config
from crossway.data.captions import CaptionExample, read_captions
from crossway.data.g2p import prepare_g2p
from crossway.data.scenes import generate_scenes
from crossway.data.shapes import generate_shapes
from crossway.data.speechgen import generate_speech
from crossway.data.text import decode_lines, read_lines
from crossway.data.textlines import generate_textlines
from crossway.decoding import DecodeConfig, greedy_search
from crossway.errors import CheckpointError, ConfigError, CrosswayError, DataError
from crossway.evaluate import Evaluation, evaluate_file, evaluate_pairs, score_files
from crossway.graphone import GraphoneConfig, GraphoneModel, load_graphone, train_graphone, train_graphone_file
from crossway.hf import export_hf, import_hf
from crossway.inference import TranslateStats, Translation, caption, set_threads, translate
from crossway.pretrained import g2p
from crossway.quantize import QUANTIZE, quantize
from crossway.rerank import Rescorer, load_rescorer, rerank
from crossway.segment import TileConfig, evaluate_folder, segment_files, segment_image
from crossway.speech import Transcript, evaluate_speech, transcribe
from crossway.tasks.image_text import evaluate_images
from crossway.training.checkpoint import ENGINES, LoadedModel, load_checkpoint, load_models
from crossway.training.loop import train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "CrosswayError", "DataError", "DecodeConfig", "Evaluation", "GraphoneConfig",
    "GraphoneModel", "LoadedModel", "Rescorer", "load_graphone", "load_rescorer", "train_graphone",
    "train_graphone_file",
    "QUANTIZE", "RunConfig", "TranslateStats", "Translation", "evaluate_file", "evaluate_pairs", "greedy_search",
    "ENGINES", "load_checkpoint", "load_models",
    "decode_lines", "g2p", "decode_overrides", "export_hf", "import_hf", "load_config",
    "prepare_g2p", "quantize", "read_lines", "rerank", "score_files", "set_threads", "train",
    "translate", "TileConfig", "evaluate_folder", "generate_shapes", "segment_files", "segment_image",
    "Model", "load", "CaptionExample", "generate_scenes", "generate_textlines", "generate_speech", "read_captions",
    "caption", "evaluate_images", "Transcript", "evaluate_speech", "transcribe",
]
