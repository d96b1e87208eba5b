"""Style scorer: Gram stand-in, CSD checkpoint conversion checked against an OpenAI-CLIP reference forward."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common.config import RewardsConfig
from common.rewards.style import (CSDStyleEmbedder, GramStyleEmbedder, StyleScorer, load_style_embedder)


# --- a minimal copy of OpenAI CLIP's VisionTransformer (openai/CLIP clip/model.py), the CSD backbone ---
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = nn.LayerNorm(d)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResBlock(d, heads) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class OpenAIVisual(nn.Module):
    def __init__(self, res, patch, width, layers, out_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((res // patch) ** 2 + 1, width) * width ** -0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, width // 64)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out_dim) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :])                                    # proj removed, as CSD does


def make_csd_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    visual = OpenAIVisual(res=32, patch=8, width=128, layers=2, out_dim=24)
    for m in visual.modules():                                             # non-trivial layernorm/bias values
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.1), nn.init.normal_(m.bias, 0.0, 0.1)
    style = torch.randn(128, 24)
    sd = {f"module.backbone.{k}": v for k, v in visual.state_dict().items() if k != "proj"}
    sd["module.last_layer_style"] = style
    sd["module.last_layer_content"] = torch.randn(128, 24)
    import argparse
    torch.save({"model_state_dict": sd, "args": argparse.Namespace(arch="vit_large"), "epoch": 3}, path)
    return visual.eval(), style


def test_csd_loader_reproduces_openai_forward(tmp_path):
    ref, style = make_csd_checkpoint(tmp_path / "checkpoint.pth")
    emb = load_style_embedder(tmp_path)                                   # folder holding checkpoint.pth
    assert isinstance(emb, CSDStyleEmbedder)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref(x) @ style, dim=-1)
        got = emb(x)
    assert got.shape == (3, 24)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    imgs = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)) for i in range(2)]
    e = emb.embed(imgs)
    assert e.shape == (2, 24) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


def test_missing_or_wrong_style_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CSDStyleEmbedder.from_checkpoint(tmp_path / "csd-vit-large" / "checkpoint.pth")
    with pytest.raises(FileNotFoundError, match="holds none of"):
        CSDStyleEmbedder.from_checkpoint(tmp_path)
    torch.save({"model_state_dict": {"x": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="last_layer_style"):
        CSDStyleEmbedder.from_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="style_path"):
        StyleScorer.from_config(RewardsConfig(source="pretrained"))
    with pytest.raises(FileNotFoundError):
        StyleScorer.from_config(RewardsConfig(source="pretrained", style_path=str(tmp_path / "nope")))


def stripes(colour_a, colour_b, period, size=64):
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    for x in range(size):
        arr[:, x] = colour_a if (x // period) % 2 == 0 else colour_b
    return Image.fromarray(arr)


def test_gram_style_scorer_missing_and_ordering():
    s = StyleScorer.from_config(RewardsConfig(source="tiny"))
    assert isinstance(s.embedder, GramStyleEmbedder)
    ref = stripes((200, 40, 40), (40, 40, 200), 2)
    same_style = stripes((200, 40, 40), (40, 40, 200), 2).transpose(Image.ROTATE_90)   # same texture, rotated
    other = Image.new("RGB", (64, 64), (120, 200, 90))
    out = s.score([ref, same_style, other, other], [ref, ref, ref, None])
    assert out[0] == pytest.approx(1.0, abs=1e-6)
    assert out[1] > out[2]
    assert out[3] is None                                                  # missing, never NaN
    assert all(v is None or not np.isnan(v) for v in out)
    assert s.score([other], [None]) == [None]
    with pytest.raises(ValueError, match="style references"):
        s.score([other], [])


def test_style_through_hf_clip_folder(tmp_path):
    from common.rewards.embedding import tiny_vision_tower
    model, proc = tiny_vision_tower("clip", seed=1)
    model.save_pretrained(tmp_path / "clip")
    proc.save_pretrained(tmp_path / "clip")
    s = StyleScorer.from_config(RewardsConfig(source="tiny", style_path=str(tmp_path / "clip")))
    img = stripes((10, 20, 30), (200, 210, 220), 3)
    assert s.score([img], [img])[0] == pytest.approx(1.0, abs=1e-5)
