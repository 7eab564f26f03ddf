"""Tiny stock encoders and padded batches shared by the tests of ``retention``."""

import torch

from retention.backbones import build_backbone
from retention.budget import Budget
from retention.encoder import RetentionEncoder

ARCHS = ["bert", "roberta", "distilbert"]
CLS, SEP = 5, 6


def tiny(arch, layers=3, attn="sdpa"):
    torch.manual_seed(0)
    return build_backbone("random", attn_implementation=attn, arch=arch, vocab_size=50, hidden_size=32,
                          num_layers=layers, num_heads=4, intermediate_size=64, max_positions=64).eval()


def batch(b=4, t=24, pad=True):
    """Ids with [CLS] first and [SEP] last; lengths t, t − 5, t − 11, t (or all t without ``pad``)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(7, 50, (b, t), generator=g)
    lengths = torch.tensor([t, t - 5, t - 11, t][:b]) if pad else torch.full((b,), t)
    mask = (torch.arange(t).expand(b, t) < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def wrap(model, layers, ratio, schedule="constant"):
    enc = RetentionEncoder(model, layers, Budget(ratio=ratio, schedule=schedule, num_layers=len(layers)),
                           protected_token_ids=[CLS, SEP])
    for g in enc.gates:  # informative random scores
        torch.nn.init.normal_(g.v.weight, std=1.0)
    return enc.eval()
