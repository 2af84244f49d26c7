"""Helpers shared by the checkpoint-family tests (tests/backbone/test_families*.py), not a test module: timm's classes
with random weights, and their state dicts saved in the layouts of DINOv2's and OpenAI CLIP's releases (verified
against facebookresearch/dinov2 models/vision_transformer.py and openai/CLIP clip/model.py)."""
import timm
import torch

DEPTH = 2  # ViT-B width and 224 / 16 key shapes, two blocks
TINY = dict(embed_dim=192, depth=4, num_heads=3, pretrained=False, num_classes=0)  # ViT-Tiny width, four blocks


def reference(name, **kwargs):
    """timm's model `name` at DEPTH blocks with every parameter random (tables, layer scales, norms and biases
    included; norm weights around 1), in eval mode: the exact reference our loaded model is compared with."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=DEPTH, **kwargs).eval()
    with torch.no_grad():
        for key, param in model.named_parameters():
            is_norm_weight = "norm" in key and key.endswith("weight")
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if is_norm_weight else 0.0))
    return model


def random_timm(name, **kwargs):
    """The state dict of timm's model `name` at ViT-Tiny width (TINY), its initial weights plus noise: a small release
    for the downstream tasks to build from."""
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.state_dict()


# --- DINOv2 ----------------------------------------------------------------------------------------------------------

def dinov2_release(state):
    """The hub file's flat state dict from timm's `state`: timm's names, pos embed with a [CLS] slot, register_tokens,
    the iBOT mask_token (1, D). timm folds [CLS]'s position into cls_token for register models; the release keeps
    them apart."""
    state = {k: v.clone() for k, v in state.items()}
    if "reg_token" in state:
        cls_pos = torch.randn(1, 1, state["pos_embed"].shape[-1])
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
        state["register_tokens"] = state.pop("reg_token")
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


# --- CLIP ------------------------------------------------------------------------------------------------------------

TIMM_TO_OPENAI = (("patch_embed.proj.", "conv1."), ("norm_pre.", "ln_pre."), ("blocks.", "transformer.resblocks."),
                  (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.weight", ".attn.in_proj_weight"),
                  (".attn.qkv.bias", ".attn.in_proj_bias"), (".attn.proj.", ".attn.out_proj."),
                  (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."))


def clip_release(state, embed_dim=512, text_tower=True):
    """model.state_dict() of OpenAI's CLIP from timm's image tower `state`: the tower under 'visual.' in its names,
    with the projection to the `embed_dim` joint embedding beside it and, with `text_tower`, a (tiny) text tower."""
    renamed = {}
    for key, value in state.items():
        if key == "cls_token":
            key, value = "class_embedding", value.reshape(-1)
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        elif key.startswith("norm."):
            key = key.replace("norm.", "ln_post.")
        for ours, theirs in TIMM_TO_OPENAI:
            key = key.replace(ours, theirs)
        renamed[f"visual.{key}"] = value.clone()
    renamed["visual.proj"] = torch.randn(renamed["visual.class_embedding"].shape[-1], embed_dim)
    if not text_tower:
        return renamed
    text = {"positional_embedding": torch.randn(77, 64), "token_embedding.weight": torch.randn(100, 64),
            "transformer.resblocks.0.ln_1.weight": torch.randn(64), "ln_final.weight": torch.randn(64),
            "text_projection": torch.randn(64, embed_dim), "logit_scale": torch.tensor(4.6)}
    return renamed | text
