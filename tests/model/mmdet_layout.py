"""Test double: rewrite a transformers MM-Grounding-DINO state dict into MMDetection's key layout.

Written independently of ``reallod.model.convert_checkpoint`` (HF names → MMDetection names here,
the other direction there), so a converted checkpoint that predicts like the original shows that the
two agree on every key. Also adds the buffers and training-only tensors real checkpoints carry.
"""

from __future__ import annotations

import re

import torch

SW = "model.backbone.conv_encoder.model."

# (transformers name regex, MMDetection name template); first match wins.
_RENAMES = [
    (SW + r"embeddings\.patch_embeddings\.projection\.(.+)", r"backbone.patch_embed.projection.\1"),
    (SW + r"embeddings\.norm\.(.+)", r"backbone.patch_embed.norm.\1"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(.+)", r"backbone.stages.\1.blocks.\2.norm1.\3"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(.+)", r"backbone.stages.\1.blocks.\2.norm2.\3"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table",
     r"backbone.stages.\1.blocks.\2.attn.w_msa.relative_position_bias_table"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.(.+)",
     r"backbone.stages.\1.blocks.\2.attn.w_msa.proj.\3"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.(.+)", r"backbone.stages.\1.blocks.\2.ffn.layers.0.0.\3"),
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.(.+)", r"backbone.stages.\1.blocks.\2.ffn.layers.1.\3"),
    (SW + r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(.+)", r"backbone.stages.\1.downsample.\2.\3"),
    (r"model\.text_backbone\.(.+)", r"language_model.language_backbone.body.model.\1"),
    (r"model\.text_projection\.(.+)", r"text_feat_map.\1"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.self_attn_layer_norm\.(.+)", r"encoder.layers.\1.norms.0.\2"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.final_layer_norm\.(.+)", r"encoder.layers.\1.norms.1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.fc1\.(.+)", r"encoder.layers.\1.ffn.layers.0.0.\2"),
    (r"model\.encoder\.layers\.(\d+)\.deformable_layer\.fc2\.(.+)", r"encoder.layers.\1.ffn.layers.1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.out_proj\.(.+)",
     r"encoder.text_layers.\1.self_attn.attn.out_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_before\.(.+)", r"encoder.text_layers.\1.norms.0.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.layer_norm_after\.(.+)", r"encoder.text_layers.\1.norms.1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.fc1\.(.+)", r"encoder.text_layers.\1.ffn.layers.0.0.\2"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.fc2\.(.+)", r"encoder.text_layers.\1.ffn.layers.1.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.vision_param", r"encoder.fusion_layers.\1.gamma_v"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.text_param", r"encoder.fusion_layers.\1.gamma_l"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_vision\.(.+)", r"encoder.fusion_layers.\1.layer_norm_v.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.layer_norm_text\.(.+)", r"encoder.fusion_layers.\1.layer_norm_l.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.vision_proj\.(.+)", r"encoder.fusion_layers.\1.attn.v_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.text_proj\.(.+)", r"encoder.fusion_layers.\1.attn.l_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.values_vision_proj\.(.+)",
     r"encoder.fusion_layers.\1.attn.values_v_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.values_text_proj\.(.+)",
     r"encoder.fusion_layers.\1.attn.values_l_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.out_vision_proj\.(.+)", r"encoder.fusion_layers.\1.attn.out_v_proj.\2"),
    (r"model\.encoder\.layers\.(\d+)\.fusion_layer\.attn\.out_text_proj\.(.+)", r"encoder.fusion_layers.\1.attn.out_l_proj.\2"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)", r"decoder.layers.\1.self_attn.attn.out_proj.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text\.out_proj\.(.+)", r"decoder.layers.\1.cross_attn_text.attn.out_proj.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)", r"decoder.layers.\1.norms.0.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text_layer_norm\.(.+)", r"decoder.layers.\1.norms.1.\2"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.+)", r"decoder.layers.\1.norms.2.\2"),
    (r"model\.decoder\.layers\.(\d+)\.final_layer_norm\.(.+)", r"decoder.layers.\1.norms.3.\2"),
    (r"model\.decoder\.layers\.(\d+)\.fc1\.(.+)", r"decoder.layers.\1.ffn.layers.0.0.\2"),
    (r"model\.decoder\.layers\.(\d+)\.fc2\.(.+)", r"decoder.layers.\1.ffn.layers.1.\2"),
    (r"model\.decoder\.reference_points_head\.(.+)", r"decoder.ref_point_head.\1"),
    (r"model\.decoder\.layer_norm\.(.+)", r"decoder.norm.\1"),
    (r"model\.level_embed", r"level_embed"),
    (r"model\.query_position_embeddings\.weight", r"query_embedding.weight"),
    (r"model\.enc_output\.(.+)", r"memory_trans_fc.\1"),
    (r"model\.enc_output_norm\.(.+)", r"memory_trans_norm.\1"),
]

# q/k/v triples that MMDetection stores as one tensor: (regex with the part in group "part", target)
_FUSED = [
    (SW + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(?P<part>query|key|value)\.(weight|bias)",
     lambda m: f"backbone.stages.{m[1]}.blocks.{m[2]}.attn.w_msa.qkv.{m[4]}"),
    (r"model\.encoder\.layers\.(\d+)\.text_enhancer_layer\.self_attn\.(?P<part>query|key|value)\.(weight|bias)",
     lambda m: f"encoder.text_layers.{m[1]}.self_attn.attn.in_proj_{m[3]}"),
    (r"model\.decoder\.layers\.(\d+)\.self_attn\.(?P<part>query|key|value)\.(weight|bias)",
     lambda m: f"decoder.layers.{m[1]}.self_attn.attn.in_proj_{m[3]}"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_text\.(?P<part>query|key|value)\.(weight|bias)",
     lambda m: f"decoder.layers.{m[1]}.cross_attn_text.attn.in_proj_{m[3]}"),
]


def unfold_order_reduction(w: torch.Tensor) -> torch.Tensor:
    """transformers patch-merging weight (out, 4·C; patches (0,0),(1,0),(0,1),(1,1)) → nn.Unfold order
    (out, C·4; channel-major, kernel positions row-major (0,0),(0,1),(1,0),(1,1))."""
    out, n = w.shape
    by_patch = w.reshape(out, 4, n // 4)  # [out, hf patch k, c]
    by_unfold = by_patch[:, [0, 2, 1, 3], :]  # unfold position j=(row, col) is hf patch [0, 2, 1, 3][j]
    return by_unfold.permute(0, 2, 1).reshape(out, n)


def unfold_order_norm(w: torch.Tensor) -> torch.Tensor:
    return unfold_order_reduction(w[None])[0]


def to_mmdet_layout(hf_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A transformers (save_pretrained) state dict → the same weights under MMDetection's names."""
    n_dec = config.decoder_layers
    n_out = len(config.backbone_config.out_features)
    mm: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in hf_state.items():
        if key.startswith(SW + "swin.layernorm."):
            continue  # transformers' unused final Swin norm; MMDetection has none
        if m := re.fullmatch(SW + r"hidden_states_norms\.stage(\d)\.(.+)", key):
            mm[f"backbone.norm{int(m[1]) - 1}.{m[2]}"] = t
            continue
        if m := re.fullmatch(r"model\.input_proj_vision\.(\d+)\.([01])\.(.+)", key):
            level, part = int(m[1]), "conv" if m[2] == "0" else "gn"
            where = f"convs.{level}" if level < n_out else f"extra_convs.{level - n_out}"
            mm[f"neck.{where}.{part}.{m[3]}"] = t
            continue
        if m := re.fullmatch(r"class_embed\.(\d+)\.bias", key):
            mm[f"bbox_head.cls_branches.{m[1]}.bias"] = t.reshape(1)
            continue
        if key == "model.encoder_output_class_embed.bias":
            mm[f"bbox_head.cls_branches.{n_dec}.bias"] = t.reshape(1)
            continue
        if m := re.fullmatch(r"bbox_embed\.(\d+)\.layers\.(\d)\.(.+)", key):
            mm[f"bbox_head.reg_branches.{m[1]}.{2 * int(m[2])}.{m[3]}"] = t
            continue
        if m := re.fullmatch(r"model\.encoder_output_bbox_embed\.layers\.(\d)\.(.+)", key):
            mm[f"bbox_head.reg_branches.{n_dec}.{2 * int(m[1])}.{m[2]}"] = t
            continue
        for pattern, target in _FUSED:
            if m := re.fullmatch(pattern, key):
                fused.setdefault(target(m), {})[m["part"]] = t
                break
        else:
            for pattern, template in _RENAMES:
                if m := re.fullmatch(pattern, key):
                    name = m.expand(template)
                    if ".downsample.reduction." in name:
                        t = unfold_order_reduction(t)
                    elif ".downsample.norm." in name:
                        t = unfold_order_norm(t)
                    mm[name] = t
                    break
            else:
                raise KeyError(f"test double has no MMDetection name for {key}")
    for name, parts in fused.items():
        mm[name] = torch.cat([parts["query"], parts["key"], parts["value"]])
    # What real checkpoints also carry: buffers and the denoising embedding (training only).
    window = config.backbone_config.window_size
    for key in list(mm):
        if m := re.fullmatch(r"(backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.)relative_position_bias_table", key):
            mm[m[1] + "relative_position_index"] = torch.zeros(window * window, window * window, dtype=torch.long)
    mm["language_model.language_backbone.body.model.embeddings.position_ids"] = torch.arange(512)[None]
    mm["dn_query_generator.label_embedding.weight"] = torch.zeros(config.max_text_len, config.d_model)
    return mm
