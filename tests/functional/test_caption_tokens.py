"""BERT's token masking (rates, special ids) and the caption cross-entropy against torch and a float64 loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from qualcl.functional import caption_loss, mask_tokens
from qualcl.losses import CaptionLoss

SPECIAL = [0, 1, 2, 3]  # pad, start, end, mask
VOCAB = 40


def _captions(seed, n=300, t=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, t), generator=g)
    ids[:, 0] = 1
    lengths = torch.randint(5, t, (n,), generator=g)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length] = 2
        ids[row, length + 1 :] = 0
    return ids


def _within(count, total, p, sigmas=6.0):
    if total == 0:
        return count == 0
    return abs(count - total * p) <= sigmas * math.sqrt(total * p * (1 - p)) + 1


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_mask_tokens_rates_follow_bert(ratio, seed):
    ids = _captions(seed)
    out = mask_tokens(
        ids,
        mask_id=3,
        vocab_size=VOCAB,
        special_ids=SPECIAL,
        ratio=ratio,
        generator=torch.Generator().manual_seed(seed),
    )
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert not out.selected[special].any(), "special tokens are never selected"
    assert torch.equal(out.ids[special], ids[special]), "special tokens are never changed"
    assert torch.equal(out.ids[~out.selected], ids[~out.selected]), "only selected tokens change"
    maskable = int((~special).sum())
    chosen = int(out.selected.sum())
    assert _within(chosen, maskable, ratio)
    became_mask = int((out.ids[out.selected] == 3).sum())
    assert _within(became_mask, chosen, 0.8)
    changed_other = out.selected & (out.ids != 3) & (out.ids != ids)
    unchanged = out.selected & (out.ids == ids)
    # 10 % random tokens (of which 1/36 draw the original id back), 10 % unchanged
    random_rate = 0.1 * (1 - 1 / (VOCAB - len(SPECIAL)))
    assert _within(int(changed_other.sum()), chosen, random_rate)
    assert _within(int(unchanged.sum()), chosen, 1 - 0.8 - random_rate)
    assert not torch.isin(out.ids[changed_other], torch.tensor(SPECIAL)).any(), "random tokens are never special"


def test_mask_tokens_is_seeded_and_ratio_extremes():
    ids = _captions(0, n=20)
    a = mask_tokens(ids, mask_id=3, vocab_size=VOCAB, special_ids=SPECIAL, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, mask_id=3, vocab_size=VOCAB, special_ids=SPECIAL, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.selected, b.selected)
    none = mask_tokens(ids, mask_id=3, vocab_size=VOCAB, special_ids=SPECIAL, ratio=0.0)
    assert not none.selected.any() and torch.equal(none.ids, ids)
    every = mask_tokens(ids, mask_id=3, vocab_size=VOCAB, special_ids=SPECIAL, ratio=1.0)
    assert torch.equal(every.selected, ~torch.isin(ids, torch.tensor(SPECIAL)))
    assert a.ids.dtype == ids.dtype


def test_mask_tokens_errors_are_named():
    ids = torch.tensor([[1, 5, 2]])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=5\).*do not match"):
        mask_tokens(ids, mask_id=3, vocab_size=5, special_ids=[0, 1, 2])
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        mask_tokens(ids.float(), mask_id=3, vocab_size=10, special_ids=[0])
    with pytest.raises(ValueError, match="ratio must be"):
        mask_tokens(ids, mask_id=3, vocab_size=10, special_ids=[0], ratio=1.5)
    with pytest.raises(ValueError, match="every id of the vocabulary is special"):
        mask_tokens(torch.tensor([[0, 1]]), mask_id=1, vocab_size=2, special_ids=[0])
    with pytest.raises(ValueError, match="mask_id must be"):
        mask_tokens(ids, mask_id=10, vocab_size=10, special_ids=[0])


# ----------------------------------------------------------------------------------- caption loss
def loop_caption_loss(logits, labels, pad, smoothing):
    total, count = 0.0, 0
    n, t, v = logits.shape
    for b in range(n):
        for i in range(t):
            y = int(labels[b, i])
            if y == pad:
                continue
            z = logits[b, i].tolist()
            top = max(z)
            lse = top + math.log(sum(math.exp(a - top) for a in z))
            logp = [a - lse for a in z]
            total += -(1 - smoothing) * logp[y] - smoothing * sum(logp) / v
            count += 1
    return total / count


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(2, 9), st.sampled_from([0.0, 0.1]), st.integers(0, 999))
def test_caption_loss_is_cross_entropy_ignoring_pad(n, t, v, smoothing, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[0, 0] = 1  # at least one labelled position (pad id 0)
    got = caption_loss(logits, labels, pad_id=0, label_smoothing=smoothing)
    assert got.item() == pytest.approx(loop_caption_loss(logits, labels, 0, smoothing), rel=1e-10)
    torch.testing.assert_close(
        got, F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=0, label_smoothing=smoothing)
    )
    assert CaptionLoss(pad_id=0, label_smoothing=smoothing)(logits, labels).item() == pytest.approx(got.item())


def test_caption_loss_gradients_and_pad_rows():
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[3, 1, 0, 0], [2, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda z: caption_loss(z, labels, pad_id=0), (logits,))
    caption_loss(logits, labels, pad_id=0).backward()
    assert torch.all(logits.grad[labels == 0] == 0), "pad positions get no gradient"
    empty = torch.zeros(2, 4, dtype=torch.long)
    z = torch.randn(2, 4, 5, requires_grad=True)
    loss = caption_loss(z, empty, pad_id=0)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)
    assert caption_loss(logits, torch.full((2, 4), -100).index_fill_(1, torch.tensor([0]), 4), pad_id=-100) > 0


def test_caption_loss_errors_are_named():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, V=5\).*vocabulary does not match"):
        caption_loss(torch.zeros(1, 2, 5), torch.tensor([[7, 0]]), pad_id=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(N, T\) = \(1, 2\)"):
        caption_loss(torch.zeros(1, 2, 5), torch.tensor([[1, 2, 3]]), pad_id=0)
    with pytest.raises(ValueError, match=r"logits must have shape \(N, T, V\)"):
        caption_loss(torch.zeros(2, 5), torch.tensor([1, 2]), pad_id=0)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\)"):
        CaptionLoss(label_smoothing=1.0)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        caption_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2), pad_id=0)
