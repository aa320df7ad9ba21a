"""GPT-2 judge: safetensors loading, forward pass against numpy, generative perplexity."""

import json
import math
import struct

import numpy as np
import pytest

from pgm_jax.data.tokenizers.gpt2 import ENDOFTEXT, _byte_to_char
from pgm_jax.eval import genppl
from pgm_jax.eval.judge import gpt2_judge
from pgm_jax.interop import CheckpointFormatError
from pgm_jax.models.gpt2 import read_safetensors

V, P, H, LAYERS, HEADS = 257, 24, 32, 2, 4  # 256 bytes + <|endoftext|> (id 256)
EOS = 256


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout: u64 header length, JSON header, raw little-endian buffers."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        dtype = {np.float32: "F32", np.float16: "F16"}[array.dtype.type]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def random_gpt2(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Hugging Face GPT2LMHeadModel tensors (transformer. prefix, tied head, mask buffers)."""
    def w(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    sd = {"transformer.wte.weight": w(V, H), "transformer.wpe.weight": w(P, H),
          "transformer.ln_f.weight": 1 + w(H, scale=0.1), "transformer.ln_f.bias": w(H)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        sd.update({
            p + "ln_1.weight": 1 + w(H, scale=0.1), p + "ln_1.bias": w(H),
            p + "attn.c_attn.weight": w(H, 3 * H), p + "attn.c_attn.bias": w(3 * H),
            p + "attn.c_proj.weight": w(H, H), p + "attn.c_proj.bias": w(H),
            p + "ln_2.weight": 1 + w(H, scale=0.1), p + "ln_2.bias": w(H),
            p + "mlp.c_fc.weight": w(H, 4 * H), p + "mlp.c_fc.bias": w(4 * H),
            p + "mlp.c_proj.weight": w(4 * H, H), p + "mlp.c_proj.bias": w(H),
            p + "attn.bias": np.tril(np.ones((1, 1, P, P), np.float32)),
        })
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def numpy_gpt2(sd: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Independent float64 forward: pre-LN blocks, gelu_new, causal softmax, tied head."""
    g = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in sd.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g[name + ".weight"] + g[name + ".bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    n, d = tokens.shape[1], H // HEADS
    x = g["wte.weight"][tokens] + g["wpe.weight"][:n]
    future = np.triu(np.ones((n, n), bool), 1)
    for i in range(LAYERS):
        p = f"h.{i}."
        qkv = ln(x, p + "ln_1") @ g[p + "attn.c_attn.weight"] + g[p + "attn.c_attn.bias"]
        q, k, v = (a.reshape(*a.shape[:2], HEADS, d).transpose(0, 2, 1, 3)
                   for a in np.split(qkv, 3, axis=-1))
        s = np.where(future, -np.inf, q @ k.transpose(0, 1, 3, 2) / math.sqrt(d))
        a = np.exp(s - s.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(x.shape)
        x = x + a @ g[p + "attn.c_proj.weight"] + g[p + "attn.c_proj.bias"]
        m = gelu_new(ln(x, p + "ln_2") @ g[p + "mlp.c_fc.weight"] + g[p + "mlp.c_fc.bias"])
        x = x + m @ g[p + "mlp.c_proj.weight"] + g[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ g["wte.weight"].T


def numpy_token_nll(sd, tokens):
    logits = numpy_gpt2(sd, tokens)[:, :-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny GPT-2 checkpoint with its byte-level tokenizer (no merges), as the hub lays out."""
    d = tmp_path_factory.mktemp("gpt2")
    sd = random_gpt2(np.random.default_rng(0))
    write_safetensors(d / "model.safetensors", sd)
    (d / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": V, "n_positions": P, "n_embd": H, "n_layer": LAYERS,
        "n_head": HEADS, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
    vocab = {c: b for b, c in _byte_to_char().items()}
    vocab[ENDOFTEXT] = EOS
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return d, sd


def test_safetensors_reader_round_trips(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.array([1.5, -2.0], np.float16)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = read_safetensors(str(tmp_path / "t.safetensors"))
    assert set(back) == {"a", "b"}
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])
        assert back[k].dtype == tensors[k].dtype


def test_forward_matches_numpy(judge_dir):
    d, sd = judge_dir
    judge = gpt2_judge(str(d))
    tokens = np.random.default_rng(1).integers(0, V, (3, P)).astype(np.int32)
    np.testing.assert_allclose(judge.token_nll(tokens), numpy_token_nll(sd, tokens),
                               atol=2e-4, rtol=1e-4)


def test_generative_perplexity_and_weights(judge_dir):
    d, sd = judge_dir
    judge = gpt2_judge(str(d))
    # Byte-level vocabulary: text -> its UTF-8 bytes; <|endoftext|> -> 256.
    assert judge.encode(f"{ENDOFTEXT}hi") == [EOS, 104, 105]
    texts = [f"{ENDOFTEXT}hello there{ENDOFTEXT}next doc", f"{ENDOFTEXT}short",
             f"{ENDOFTEXT}" + "x" * 40]
    tokens = genppl.retokenize(texts, judge.encode, EOS, P)
    assert tokens.shape == (3, P) and (tokens[1, 6:] == EOS).all()  # truncated, EOS-padded
    w = genppl.first_chunk_weights(tokens, EOS)
    # Row 0: its second EOS (token 12, target 11) is not a target, the next document is.
    assert w[0, 11] == 0 and w[0, 12] == 1 and w[0, -1] == 0
    assert w[1].sum() == 5  # 's', 'h', 'o', 'r', 't'; its padding EOS are not targets
    ppl = genppl.perplexity(judge.token_nll, tokens, w, batch_size=2, pad_id=EOS)
    ref = numpy_token_nll(sd, tokens)
    assert ppl == pytest.approx(math.exp((ref * w).sum() / w.sum()), rel=1e-4)


def test_texts_with_specials_and_entropy():
    decode = lambda ids: "".join(chr(97 + i) for i in ids)
    texts = genppl.texts_with_specials(np.array([[9, 0, 1, 9, 2]]), decode, (9,))
    assert texts == [f"{ENDOFTEXT}ab{ENDOFTEXT}c"]
    ent = genppl.entropy(np.array([[1, 1, 2, 2], [3, 3, 3, 3]]))
    assert ent == pytest.approx(math.log(2) / 2)


def test_bad_checkpoints_are_reported(tmp_path, judge_dir):
    d, sd = judge_dir
    with pytest.raises(CheckpointFormatError, match="model.safetensors"):
        gpt2_judge(str(tmp_path))
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    bad = dict(sd)
    bad["transformer.wpe.weight"] = bad["transformer.wpe.weight"][:10]
    write_safetensors(tmp_path / "model.safetensors", bad)
    with pytest.raises(CheckpointFormatError, match="wpe"):
        gpt2_judge(str(tmp_path))
