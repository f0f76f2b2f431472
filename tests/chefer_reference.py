"""Test-only transcription of Chefer et al.'s relevance for ViTs (CVPR 2021), for comparing `chefer_lrp` with it.

Source: github.com/hila-chefer/Transformer-Explainability, `baselines/ViT/ViT_explanation_generator.py`
(`LRP.generate_LRP`, `method="transformer_attribution"`), the model `baselines/ViT/ViT_LRP.py` and its rules
`modules/layers_ours.py` (MIT licence). Written here as functions of a parameter dict, one image at a time
(their code reads `cam[0]` and sums whole tensors: batch size 1), without their module classes or hooks:

- the forward of their `VisionTransformer`: patch convolution, class token, position embedding, blocks
  `x + attn(norm1(x))`, `x + mlp(norm2(x))` with a fused `qkv`, final norm, class token, head;
- the relevance, started from the one-hot target (not the logit): `Linear` alpha 1 / beta 0 on signed inputs and
  without the bias, `RelPropSimple` for the two attention products with both relevances halved (the product
  `q kᵀ` before the scale), `Add` with each summand's share renormalised to `|ΣR_a| : |ΣR_b|` of `ΣR`, `Clone`,
  `IndexSelect`; LayerNorm, GELU, softmax and dropout hand the relevance through unchanged (`RelProp.relprop`);
- per block `(∇A ⊙ R_A)⁺` averaged over heads, `∇A` the plain gradient of the target logit; the rollout with
  the identity added and no renormalisation (`ViT_LRP.compute_rollout_attention`: the renormalisation there is
  commented out); the map is the class-token row over the patch tokens.

`params(...)` reads timm, torchvision and Hugging Face ViTs (class token, no register tokens) into the dict.
Checked against their code, run from a snapshot with an `einops` shim: max abs difference 0 / ~1e-16 (float64).
"""

import torch
import torch.nn.functional as F


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Theirs: `a / (b + 1e-9)`, 0 where `b == 0`."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def linear_rel(x, w, r):
    """`Linear.relprop` with alpha 1 (beta 0): `x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`, `S = R / (x⁺W⁺ᵀ + x⁻W⁻ᵀ)`."""
    pw, nw, px, nx = w.clamp(min=0), w.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(r, F.linear(px, pw) + F.linear(nx, nw))
    return px * (s @ pw) + nx * (s @ nw)


def matmul_rel(a, b, r):
    """`RelPropSimple` of `a @ b` (their einsums), both halved as in `Attention.relprop`."""
    s = safe_divide(r, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def add_rel(a, b, r):
    """`Add.relprop`: z-rule shares, rescaled so their sums split `ΣR` as `|Σa| : |Σb|` (sums over the tensor)."""
    s = safe_divide(r, a + b)
    ra, rb = a * s, b * s
    a_sum, b_sum = ra.sum(), rb.sum()
    a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * r.sum()
    return ra * safe_divide(a_fact, ra.sum()), rb * safe_divide(b_fact, rb.sum())


def clone_rel(x, r1, r2):
    """`Clone.relprop` of a tensor used twice."""
    return x * (safe_divide(r1, x) + safe_divide(r2, x))


def _heads(t, h):
    b, n, c = t.shape
    return t.reshape(b, n, h, c // h).permute(0, 2, 1, 3)


def _merge(t):
    b, h, n, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _block(p, blk, x, rec):
    """One block's forward; `rec` gets what the relevance pass reads (their forward hooks' `X`)."""
    h, d = p["heads"], x.shape[-1]
    ln = lambda t, g, bias: F.layer_norm(t, (d,), g, bias, p["eps"])
    y = ln(x, blk["n1w"], blk["n1b"])
    qkv = F.linear(y, blk["qkv_w"], blk["qkv_b"])
    q, k, v = (_heads(t, h) for t in qkv.split(d, -1))
    attn = ((q @ k.transpose(-1, -2)) * (d // h) ** -0.5).softmax(-1)
    ctx = _merge(attn @ v)
    out = F.linear(ctx, blk["proj_w"], blk["proj_b"])
    x1 = x + out
    y2 = ln(x1, blk["n2w"], blk["n2b"])
    hid = F.gelu(F.linear(y2, blk["fc1_w"], blk["fc1_b"]))
    mlp = F.linear(hid, blk["fc2_w"], blk["fc2_b"])
    rec.append(dict(x=x, y=y, q=q, k=k, v=v, attn=attn, ctx=ctx, out=out, x1=x1, y2=y2, hid=hid, mlp=mlp))
    return x1 + mlp


def forward(p, image):
    """Logits `[1, classes]` and the per-block records (attention probabilities kept in the graph)."""
    t = F.conv2d(image, p["patch_w"], p["patch_b"], stride=p["patch_w"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([p["cls"].expand(t.shape[0], -1, -1), t], 1) + p["pos"]
    rec: list[dict] = []
    for blk in p["blocks"]:
        x = _block(p, blk, x, rec)
    z = F.layer_norm(x, x.shape[-1:], p["norm_w"], p["norm_b"], p["final_eps"])
    return F.linear(z[:, 0], p["head_w"], p["head_b"]), rec, z


def _block_rel(p, blk, r, rec):
    """`Block.relprop`: relevance at the block's input; stores the halved relevance at the attention."""
    h = p["heads"]
    r_res, r_mlp = add_rel(rec["x1"], rec["mlp"], r)
    r_mlp = linear_rel(rec["hid"], blk["fc2_w"], r_mlp)  # GELU: unchanged
    r_mlp = linear_rel(rec["y2"], blk["fc1_w"], r_mlp)  # norm2: unchanged
    r = clone_rel(rec["x1"], r_res, r_mlp)
    r_res, r_attn = add_rel(rec["x"], rec["out"], r)
    r_ctx = _heads(linear_rel(rec["ctx"], blk["proj_w"], r_attn), h)
    r_a, r_v = matmul_rel(rec["attn"].detach(), rec["v"].detach(), r_ctx)
    rec["attn_cam"] = r_a
    r_q, r_k = matmul_rel(rec["q"].detach(), rec["k"].detach().transpose(-1, -2), r_a)  # softmax: unchanged
    r_qkv = torch.cat([_merge(r_q), _merge(r_k.transpose(-1, -2)), _merge(r_v)], -1)
    r_y = linear_rel(rec["y"], blk["qkv_w"], r_qkv)
    return clone_rel(rec["x"], r_res, r_y)  # norm1: unchanged


def generate_lrp(p, image, index, start_layer=0):
    """Their `generate_LRP(image, index, method="transformer_attribution", start_layer)` for one image
    `[1, 3, H, W]`: the map `[1, patches]`."""
    logits, rec, z = forward(p, image)
    one_hot = torch.zeros_like(logits)
    one_hot[0, index] = 1
    grads = torch.autograd.grad((one_hot * logits).sum(), [b["attn"] for b in rec])
    with torch.no_grad():
        r = linear_rel(z[:, 0].detach(), p["head_w"], one_hot)
        cls = z[:, :1].detach()
        r = torch.cat([cls * safe_divide(r[:, None], cls), torch.zeros_like(z[:, 1:])], 1)  # IndexSelect
        for blk, b in zip(reversed(p["blocks"]), reversed(rec), strict=True):  # final norm: unchanged
            r = _block_rel(p, blk, r, b)
        cams = [(g[0] * b["attn_cam"][0]).clamp(min=0).mean(0, keepdim=True) for g, b in zip(grads, rec, strict=True)]
        eye = torch.eye(cams[0].shape[-1], dtype=cams[0].dtype)
        joint = cams[start_layer] + eye
        for cam in cams[start_layer + 1 :]:
            joint = (cam + eye).bmm(joint)
    return joint[:, 0, 1:]


def params(model, family):
    """The parameter dict of a timm, torchvision or Hugging Face ViT with a class token and no other prefix."""
    if family == "timm":
        return _timm(model)
    if family == "torchvision":
        return _torchvision(model)
    return _hf(model)


def _timm(m):
    blocks = [
        dict(n1w=b.norm1.weight, n1b=b.norm1.bias, qkv_w=b.attn.qkv.weight, qkv_b=b.attn.qkv.bias,
             proj_w=b.attn.proj.weight, proj_b=b.attn.proj.bias, n2w=b.norm2.weight, n2b=b.norm2.bias,
             fc1_w=b.mlp.fc1.weight, fc1_b=b.mlp.fc1.bias, fc2_w=b.mlp.fc2.weight, fc2_b=b.mlp.fc2.bias)
        for b in m.blocks
    ]  # fmt: skip
    return dict(
        patch_w=m.patch_embed.proj.weight, patch_b=m.patch_embed.proj.bias, cls=m.cls_token, pos=m.pos_embed,
        blocks=blocks, norm_w=m.norm.weight, norm_b=m.norm.bias, head_w=m.head.weight, head_b=m.head.bias,
        heads=m.blocks[0].attn.num_heads, eps=m.blocks[0].norm1.eps, final_eps=m.norm.eps,
    )  # fmt: skip


def _torchvision(m):
    blocks = [
        dict(n1w=b.ln_1.weight, n1b=b.ln_1.bias, qkv_w=b.self_attention.in_proj_weight,
             qkv_b=b.self_attention.in_proj_bias, proj_w=b.self_attention.out_proj.weight,
             proj_b=b.self_attention.out_proj.bias, n2w=b.ln_2.weight, n2b=b.ln_2.bias,
             fc1_w=b.mlp[0].weight, fc1_b=b.mlp[0].bias, fc2_w=b.mlp[3].weight, fc2_b=b.mlp[3].bias)
        for b in m.encoder.layers
    ]  # fmt: skip
    return dict(
        patch_w=m.conv_proj.weight, patch_b=m.conv_proj.bias, cls=m.class_token, pos=m.encoder.pos_embedding,
        blocks=blocks, norm_w=m.encoder.ln.weight, norm_b=m.encoder.ln.bias, head_w=m.heads.head.weight,
        head_b=m.heads.head.bias, heads=m.encoder.layers[0].self_attention.num_heads,
        eps=m.encoder.layers[0].ln_1.eps, final_eps=m.encoder.ln.eps,
    )  # fmt: skip


def _hf(m):
    """transformers 5 names (`vit.layers.i.attention.q_proj`, `mlp.fc1`); GELU exact (`hidden_act="gelu"`)."""
    blocks = [
        dict(n1w=b.layernorm_before.weight, n1b=b.layernorm_before.bias,
             qkv_w=torch.cat([b.attention.q_proj.weight, b.attention.k_proj.weight, b.attention.v_proj.weight]),
             qkv_b=torch.cat([b.attention.q_proj.bias, b.attention.k_proj.bias, b.attention.v_proj.bias]),
             proj_w=b.attention.o_proj.weight, proj_b=b.attention.o_proj.bias, n2w=b.layernorm_after.weight,
             n2b=b.layernorm_after.bias, fc1_w=b.mlp.fc1.weight, fc1_b=b.mlp.fc1.bias, fc2_w=b.mlp.fc2.weight,
             fc2_b=b.mlp.fc2.bias)
        for b in m.vit.layers
    ]  # fmt: skip
    emb = m.vit.embeddings
    return dict(
        patch_w=emb.patch_embeddings.projection.weight, patch_b=emb.patch_embeddings.projection.bias,
        cls=emb.cls_token, pos=emb.position_embeddings, blocks=blocks, norm_w=m.vit.layernorm.weight,
        norm_b=m.vit.layernorm.bias, head_w=m.classifier.weight, head_b=m.classifier.bias,
        heads=m.config.num_attention_heads, eps=m.config.layer_norm_eps, final_eps=m.config.layer_norm_eps,
    )  # fmt: skip
