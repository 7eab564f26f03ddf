"""Gates in the encoder of stock BART / T5 models: the hard path equals the stock encoder with the
dropped tokens masked out (T5: relative position bias from original positions), and the decoder
cross-attends to exactly the retained encoder states, in training and in generation."""

import pytest
import torch

from datamodules.loaders import DATASET_INDEX
from retention.budget import Budget
from retention.encoder import RetentionEncoder, transformer_layers
from retention.backbones import build_backbone, build_seq2seq

from .helpers import optimisation

ARCHS = ["bart", "t5"]
BOS, EOS = 1, 2
SPECIAL = {"pad": 0, "bos": BOS, "eos": EOS, "decoder_start": BOS}


def tiny_seq2seq(arch):
    torch.manual_seed(0)
    return build_seq2seq("random", arch=arch, vocab_size=60, hidden_size=32, num_layers=3, num_heads=4,
                         intermediate_size=64, max_positions=64, special_ids=SPECIAL).eval()


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 60, (3, 20), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    ids[1, 14], ids[1, 15:] = EOS, 0
    return ids, mask


def wrap(encoder, layer, ratio=0.3):
    r = RetentionEncoder(encoder, [layer], Budget(ratio=ratio, num_layers=1), protected_token_ids=[BOS, EOS])
    for g in r.gates:  # informative random scores
        torch.nn.init.normal_(g.v.weight, std=1.0)
    return r.eval()


def kept_mask(out, t):
    """(B, T) bool: original positions the hard path kept."""
    kept = torch.zeros(out.positions.shape[0], t + 1, dtype=torch.bool)
    kept.scatter_(1, out.positions.masked_fill(~out.valid, t), out.valid)
    return kept[:, :t]


def stock_with_dropped_keys_masked(encoder, ids, mask, layer, kept):
    """Stock encoder at full length; from ``layer`` on every attention ignores the dropped tokens as keys."""
    add = torch.zeros(kept.shape).masked_fill(~kept, torch.finfo(torch.float32).min)[:, None, None, :]

    def hook(module, args, kwargs):
        return (args[0], add, *args[2:]), kwargs

    layers = transformer_layers(encoder)
    handles = [layers[i].register_forward_pre_hook(hook, with_kwargs=True) for i in range(layer, len(layers))]
    try:
        return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_hard_encoder_equals_stock_encoder_with_dropped_tokens_masked(arch, layer):
    encoder = tiny_seq2seq(arch).get_encoder()
    ids, mask = batch()
    r = wrap(encoder, layer)
    with torch.no_grad():
        out = r(ids, mask, mode="hard")
        ref = stock_with_dropped_keys_masked(encoder, ids, mask, layer, kept_mask(out, ids.shape[1]))
    assert out.last_hidden_state.shape[1] == int(out.valid.sum(1).max()) < ids.shape[1]  # physically shorter
    ref = ref.gather(1, out.positions[..., None].expand(-1, -1, ref.shape[-1]))
    torch.testing.assert_close(out.last_hidden_state[out.valid], ref[out.valid], atol=1e-5, rtol=1e-4)


def test_t5_relative_bias_uses_original_positions():
    """With the gate at block 0, block 0 would otherwise compute T5's relative position bias from the
    shortened sequence, i.e. give exactly the stock encoder run on the kept tokens as if they were
    adjacent. The hard path instead equals the stock encoder with the dropped tokens masked out
    (original positions), and the two differ: the test above is not vacuous for T5."""
    encoder = tiny_seq2seq("t5").get_encoder()
    ids, mask = batch()
    r = wrap(encoder, 0)
    with torch.no_grad():
        out = r(ids, mask, mode="hard")
        ref = stock_with_dropped_keys_masked(encoder, ids, mask, 0, kept_mask(out, ids.shape[1]))
        adjacent = encoder(input_ids=ids.gather(1, out.positions), attention_mask=out.valid.long()).last_hidden_state
    ref = ref.gather(1, out.positions[..., None].expand(-1, -1, ref.shape[-1]))
    torch.testing.assert_close(out.last_hidden_state[out.valid], ref[out.valid], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(adjacent[out.valid], ref[out.valid], atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_soft_zero_gates_remove_tokens_like_the_hard_path(arch):
    """Soft path with gates forced shut on the tokens the hard path drops == the hard path (kept rows)."""
    encoder = tiny_seq2seq(arch).get_encoder()
    ids, mask = batch()
    r = wrap(encoder, 1)
    with torch.no_grad():
        hard = r(ids, mask, mode="hard")
        kept = kept_mask(hard, ids.shape[1])
        scorer = r.gates[0]
        orig = scorer.forward
        scorer.forward = lambda h, w: torch.where(kept, 50.0, -50.0).to(h.dtype)
        soft = r(ids, mask, mode="soft")
        scorer.forward = orig
    assert soft.gate_values.shape == ids.shape
    assert torch.equal(soft.gate_values > 0, kept)
    got = soft.last_hidden_state.gather(1, hard.positions[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(got[hard.valid], hard.last_hidden_state[hard.valid], atol=1e-4, rtol=1e-4)


def cross_attention_keys(model):
    """Module whose output length is the decoder's cross-attention key length (first decoder layer)."""
    if model.config.model_type == "bart":
        return model.model.decoder.layers[0].encoder_attn.k_proj
    return model.decoder.block[0].layer[1].EncDecAttention.k


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_cross_attends_only_to_retained_states(arch):
    from lightning_modules.summarization import RetentionSummarizer

    seq2seq = build_seq2seq("random", arch=arch, vocab_size=60, hidden_size=32, num_layers=2, num_heads=4,
                            intermediate_size=64, max_positions=64, special_ids=SPECIAL)
    encoder = RetentionEncoder(seq2seq.get_encoder(), [1], Budget(ratio=0.3), protected_token_ids=[BOS, EOS])
    system = RetentionSummarizer(encoder, seq2seq, optimisation(),
                                 generation={"max_new_tokens": 5, "num_beams": 2}).eval()
    for g in system.encoder.gates:
        torch.nn.init.normal_(g.v.weight, std=1.0)
    ids, mask = batch()
    lengths = []
    handle = cross_attention_keys(system.seq2seq).register_forward_hook(lambda m, a, o: lengths.append(o.shape[1]))
    labels = torch.randint(3, 60, (3, 6))
    with torch.no_grad():
        _, out = system(ids, mask, labels, mode="hard")
        m_max = int(out.valid.sum(1).max())
        assert m_max == int(out.retained_counts[0].max()) < ids.shape[1]
        assert lengths == [m_max]
        lengths.clear()
        generated = system.generate(ids, mask, mode="hard")
        assert lengths and set(lengths) == {m_max}  # every decoding step, every beam
        lengths.clear()
        system(ids, mask, labels, mode="dense")
        assert lengths == [ids.shape[1]]
    handle.remove()
    assert generated.shape[0] == 3 and generated.shape[1] <= 6


def test_encoder_only_task_rejects_seq2seq_backbone():
    with pytest.raises(ValueError, match="encoder–decoder"):
        build_backbone("random", arch="t5", vocab_size=60, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_positions=64)
    with pytest.raises(ValueError, match="bart, t5"):
        build_seq2seq("random", arch="bert", vocab_size=60, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_positions=64)


def test_rouge_of_generated_text_equal_to_reference_is_one(monkeypatch):
    """The evaluation plumbing: ids → text (special tokens and -100 padding removed) → ROUGE."""
    from transformers import AutoTokenizer

    from lightning_modules.summarization import RetentionSummarizer
    from retention.backbones import resolve_backbone_path

    tok = AutoTokenizer.from_pretrained(resolve_backbone_path("minilm"))
    seq2seq = build_seq2seq("random", arch="bart", vocab_size=len(tok), hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, max_positions=64,
                            special_ids={"pad": 0, "bos": tok.cls_token_id, "eos": tok.sep_token_id})
    encoder = RetentionEncoder(seq2seq.get_encoder(), [0], Budget(ratio=0.5),
                               protected_token_ids=(tok.cls_token_id, tok.sep_token_id))
    system = RetentionSummarizer(encoder, seq2seq, optimisation(), tokenizer=tok).eval()
    src = tok(["a long article about gates", "another article"], padding=True, return_tensors="pt")
    labels = tok(text_target=["gates keep tokens", "short summary here"], padding=True, return_tensors="pt")["input_ids"]
    labels = labels.masked_fill(labels == tok.pad_token_id, -100)
    monkeypatch.setattr(system, "generate", lambda ids, mask, mode, plan=None: labels.masked_fill(labels < 0, tok.pad_token_id))
    with torch.no_grad():
        system.validation_step({"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": labels,
                                DATASET_INDEX: torch.arange(2)}, 0)
    for path in ("soft", "hard", "dense"):
        for key in ("rouge1", "rougeL"):
            assert float(system.example_means[f"val_{key}_{path}"].compute()) == 1.0
