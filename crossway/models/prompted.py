"""A decoder prompt for any protocol model: `Prompted(model, prompt)` is the model whose every output starts
after `bos prompt...`, fed but never produced, scored or returned (Whisper's task tokens `<|en|> <|transcribe|>
<|notimestamps|>`; a target-language tag). Tokens in `suppress` (the special tokens) get no probability in
decoding. Search, scoring and serving take it as any other model: the prompt
lives here, not in search.

P prompt tokens, B rows, T target length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossway.models.interface import Memory, State, auxiliary_loss, target_limits


class Prompted(nn.Module):
    def __init__(self, model: nn.Module, prompt: list[int], suppress: list[int] = ()):
        super().__init__()
        self.model = model
        self.register_buffer("prompt", torch.tensor(prompt, dtype=torch.long), persistent=False)  # (P,)
        self.register_buffer("suppress", torch.tensor(list(suppress), dtype=torch.long), persistent=False)
        self.generator = model.generator

    def encode(self, src: Tensor, src_mask: Tensor) -> Memory:
        return self.model.encode(src, src_mask)

    def decode_step(self, prev_tokens: Tensor, memory: Memory, state: State | None,
                    attention: bool = False) -> tuple[Tensor, State]:
        """The first step (state None, prev = bos) reads bos and the whole prompt; its logits predict the
        first output token."""
        first = state is None
        logits, state = self.model.decode_step(prev_tokens, memory, state, attention)
        if first:
            for tok in self.prompt.tolist():
                logits, state = self.model.decode_step(torch.full_like(prev_tokens, tok), memory, state, attention)
        if self.suppress.numel():
            logits.index_fill_(1, self.suppress.to(logits.device), float("-inf"))
        return logits, state

    def max_target_tokens(self, memory: Memory) -> Tensor | None:
        """The wrapped model's limit less the prompt, which takes positions and is never returned."""
        limits = target_limits(self.model, memory)
        return None if limits is None else limits - self.prompt.numel()

    def forward(self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, features: bool = False) -> Tensor:
        """tgt_in (B, T) = bos + output -> (B, T, V) (or features): the prompt is read between bos and the
        output, its own predictions dropped."""
        P = self.prompt.numel()
        full = torch.cat([tgt_in[:, :1], self.prompt.expand(tgt_in.size(0), P), tgt_in[:, 1:]], 1)  # (B, P + T)
        return self.model(src, src_mask, full, features)[:, P:]

    def auxiliary_loss(self) -> Tensor | None:
        return auxiliary_loss(self.model)
