"""The two fixes to transformers' Grounding-DINO loss: per-image phrase offsets, trainable query selection."""

from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher, GroundingDinoImageLoss
from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import build_label_maps

from reallod.model import token_prompt as P
from reallod.model.tiny import build_tiny_detector
from reallod.train.losses import GroundingLoss, install, training_loss


def _batch():
    # image 0: three phrases; image 1: one phrase; image 2: two phrases (token ids are arbitrary words)
    prompts = [[P.CLS_ID, 2000, P.DOT_ID, 2001, 2002, P.DOT_ID, 2003, P.DOT_ID, P.SEP_ID],
               [P.CLS_ID, 3000, 3001, P.DOT_ID, P.SEP_ID],
               [P.CLS_ID, 4000, P.DOT_ID, 4001, P.DOT_ID, P.SEP_ID]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [P.PAD_ID] * (width - len(p)) for p in prompts])
    targets = [{"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
               {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    return ids, targets


def test_targets_point_at_each_images_own_phrase():
    ids, targets = _batch()
    logits = torch.zeros(3, 4, 16)
    outputs = {"logits": logits, "label_maps": build_label_maps(logits, ids)}
    indices = [(torch.tensor([1]), torch.tensor([0]))] * 3
    matcher = GroundingDinoHungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    ours = GroundingLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(outputs, targets, indices)
    for i, want in enumerate([[6], [1, 2], [3]]):  # token positions of the labelled phrase in each prompt
        assert ours[i, 1].nonzero().flatten().tolist() == want
        assert ours[i, [0, 2, 3]].sum() == 0
    # transformers' own version offsets image 1 by its own phrase count (1, not 3) and image 2 by its own (2,
    # not 4): both get another image's tokens.
    theirs = GroundingDinoImageLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(outputs, targets, indices)
    assert theirs[0, 1].nonzero().flatten().tolist() == [6]
    assert theirs[1, 1].nonzero().flatten().tolist() == [3, 4]  # image 0's second phrase
    assert theirs[2, 1].nonzero().flatten().tolist() == [1, 2]  # image 1's phrase
    # One phrase, then three: the second image's label 2 becomes 2 + 3, past the 4 phrases of the batch.
    pair = {"logits": logits[:2], "label_maps": build_label_maps(logits[:2], ids[[1, 0]])}
    with pytest.raises(IndexError):
        GroundingDinoImageLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(
            pair, [targets[1], targets[0]], indices[:2])
    fixed = GroundingLoss(matcher, 0.25, ["labels"])._get_target_classes_one_hot(pair, [targets[1], targets[0]],
                                                                                 indices[:2])
    assert fixed[1, 1].nonzero().flatten().tolist() == [6]


def test_encoder_loss_reaches_the_query_selection_heads():
    torch.manual_seed(0)
    model = build_tiny_detector(seed=0, max_text_len=32).train()
    model.config.auxiliary_loss = True
    ids, targets = _batch()
    inputs = dict(pixel_values=torch.randn(3, 3, 96, 96), pixel_mask=torch.ones(3, 96, 96, dtype=torch.long),
                  input_ids=ids, attention_mask=(ids != P.PAD_ID).long(), token_type_ids=torch.zeros_like(ids))
    # The box head's last layer starts at zero (DETR's init), so only it gets a gradient on the first step.
    heads = [*model.model.encoder_output_bbox_embed.layers[-1].parameters(), model.model.enc_output.weight,
             model.model.enc_output_norm.weight]

    def grads(fix: bool) -> list[float]:
        model.zero_grad()
        install(model, fix)
        out = model(**inputs, labels=targets)
        loss, terms = training_loss(model.config, out, targets, inputs["input_ids"], inputs["attention_mask"], fix)
        assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "loss_ce_0", "loss_giou"} <= set(terms)
        loss.backward()
        return [float(p.grad.abs().sum()) if p.grad is not None else 0.0 for p in heads]

    assert all(g == 0.0 for g in grads(fix=False))  # transformers' encoder loss: nothing to learn from
    assert all(g > 0.0 for g in grads(fix=True))
