"""Helpers shared by the checkpoint tests (tests/backbone/test_checkpoint.py, test_families*.py), not a test module:
timm's classes with random weights, and their state dicts in the layouts of each family's release, as its code writes
them (read from the authors' DropPos and MoCo v3 code, DINO's main_dino.py and utils.MultiCropWrapper, iBOT's
main_ibot.py, Meta's deit models_v2.py, unilm's beit / beit2 modeling_pretrain.py, facebookresearch/dinov2
models/vision_transformer.py, openai/CLIP clip/model.py, microsoft/SimMIM main_simmim.py, lxtGH/CAE
modeling_cae.py). A release's parts that no encoder reads (decoders, projection heads) are random, at the state's
width."""
import argparse
import re

import timm
import torch

DEPTH = 2  # ViT-B width and 224 / 16 key shapes, two blocks
TINY = dict(embed_dim=192, depth=4, num_heads=3, pretrained=False, num_classes=0)  # ViT-Tiny width, four blocks


def reference(name, **kwargs):
    """timm's model `name` at DEPTH blocks with every parameter random (see `randomize`), in eval mode: the exact
    reference our loaded model is compared with."""
    return randomize(timm.create_model(name, pretrained=False, depth=DEPTH, **kwargs))


def random_timm(name, **kwargs):
    """The state dict of timm's model `name` at ViT-Tiny width (TINY), its initial weights plus noise: a small release
    for the downstream tasks to build from."""
    torch.manual_seed(0)
    model = timm.create_model(name, **(TINY | kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.state_dict()


def randomize(model):
    """Every parameter of `model` random, LayerNorm weights around 1 (tables, layer scales and biases included), in
    eval mode; timm's names and Hugging Face's (layernorm_before / after)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_norm_weight = "norm" in name and name.endswith("weight")
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if is_norm_weight else 0.0))
    return model.eval()


def width_of(state):
    return state["cls_token"].shape[-1]


# --- DropPos and MoCo v3 ---------------------------------------------------------------------------------------------

def droppos_decoder(width=192, patches=196):
    """DropPos's position decoder and mask_pos_token, to be left out."""
    return {
        "mask_pos_token": torch.randn(1, 1, width),
        "decoder_embed.weight": torch.randn(512, width), "decoder_embed.bias": torch.randn(512),
        "decoder_blocks.0.norm1.weight": torch.randn(512), "decoder_blocks.0.attn.qkv.weight": torch.randn(1536, 512),
        "decoder_norm.weight": torch.randn(512), "decoder_norm.bias": torch.randn(512),
        "decoder_pred.weight": torch.randn(patches, 512), "decoder_pred.bias": torch.randn(patches),
    }


def droppos_release(state):
    """The authors' release layout: DDP state dict (encoder and decoder) under 'state_dict', arch name under 'model'."""
    state = {**state, **droppos_decoder(width_of(state), state["pos_embed"].shape[1] - 1)}
    return {"epoch": 200, "state_dict": {"module." + k: v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "model": "DropPos_mae_vit_base_patch16_dec512d2b"}


def mocov3_release(state):
    """MoCo v3's main_moco.py checkpoint: base and momentum encoders (the momentum one differs) with the projector
    and predictor, DDP-wrapped under 'state_dict'."""
    wrapped = {f"module.base_encoder.{k}": v for k, v in state.items()}
    wrapped |= {f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()}
    wrapped |= {"module.base_encoder.head.0.weight": torch.randn(4096, width_of(state)),
                "module.predictor.0.weight": torch.randn(8, 8)}
    return {"epoch": 300, "arch": "vit_base", "state_dict": wrapped, "optimizer": {}}


# --- DINO and iBOT: plain ViT, teacher and student -------------------------------------------------------------------

def projection_head(prefix, width=768):
    """DINOHead / iBOTHead keys (MLP + weight-normed last layer), to be left out."""
    return {f"{prefix}head.mlp.0.weight": torch.randn(64, width), f"{prefix}head.mlp.0.bias": torch.randn(64),
            f"{prefix}head.last_layer.weight_g": torch.randn(128, 1), f"{prefix}head.last_layer.weight_v": torch.randn(
                128, 64)}


def dino_training_checkpoint(teacher, student, loss_key="dino_loss", masked_embed=False):
    """main_dino.py's save_dict from the `teacher` and `student` state dicts: the student is DDP-wrapped ('module.'),
    the teacher not; MultiCropWrapper puts the ViT under 'backbone.' and the projection head under 'head.'. iBOT's
    student also has masked_embed."""
    width = width_of(teacher)
    teacher_keys = {f"backbone.{k}": v for k, v in teacher.items()} | projection_head("", width)
    student_state = student | ({"masked_embed": torch.randn(1, width)} if masked_embed else {})
    student_keys = {f"module.backbone.{k}": v for k, v in student_state.items()} | projection_head("module.", width)
    return {"student": student_keys, "teacher": teacher_keys, "optimizer": {"state": {}, "param_groups": []},
            "epoch": 100, "args": argparse.Namespace(arch="vit_base", patch_size=16), loss_key: {
                "center": torch.zeros(1, 128)}}


# --- DeiT III, BEiT, BEiT v2, data2vec, SimMIM, CAE ------------------------------------------------------------------

def timm_to_deit3_release(state):
    """timm's ls1.gamma / ls2.gamma as Meta's deit models_v2.py names them (gamma_1 / gamma_2), under 'model'."""
    return {"model": {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v for k, v in state.items()}}


def timm_to_beit_release(state, shared_table=False, pretraining=False, beitv2=False):
    """timm's Beit state in unilm's release layout: the same keys (q_bias / v_bias, gamma_1 / gamma_2) plus each
    table's relative_position_index buffer; pre-training files share one table ('rel_pos_bias.') and carry
    mask_token, lm_head (and BEiT v2's cls_pt_layers)."""
    release, width = dict(state), width_of(state)
    tables = [k for k in state if k.endswith("relative_position_bias_table")]
    for key in tables:
        release[key.replace("bias_table", "index")] = torch.zeros(197, 197, dtype=torch.long)
    if shared_table:  # timm's reference built with use_shared_rel_pos_bias keeps it under rel_pos_bias. already
        assert tables == ["rel_pos_bias.relative_position_bias_table"]
    if pretraining:
        release |= {"mask_token": torch.randn(1, 1, width), "lm_head.weight": torch.randn(8192, width),
                    "lm_head.bias": torch.randn(8192)}
    if beitv2:
        release |= {"cls_pt_layers.0.norm1.weight": torch.randn(width),
                    "cls_pt_layers.0.attn.q_bias": torch.randn(width), "cls_pt_layers.0.gamma_1": torch.randn(width)}
    return release


def simmim_release(state):
    """main_simmim.py's save_state: SimMIM(encoder=VisionTransformerForSimMIM, decoder=Sequential(Conv2d, PixelShuffle))
    under 'model'; the ViT-B recipe has a shared relative position table (USE_SHARED_RPB), layer scale 0.1, no APE."""
    width = width_of(state)
    encoder = dict(state) | {"mask_token": torch.randn(1, 1, width),
                             "rel_pos_bias.relative_position_index": torch.zeros(197, 197, dtype=torch.long)}
    model = {f"encoder.{k}": v for k, v in encoder.items()}
    model |= {"decoder.0.weight": torch.randn(16 * 16 * 3, width, 1, 1), "decoder.0.bias": torch.randn(16 * 16 * 3)}
    return {"model": model, "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 0.0, "epoch": 799}


def cae_release(encoder_state, teacher_state):
    """modeling_cae.py's VisionTransformerForMaskedImageModeling.state_dict() under 'model': the encoder, its momentum
    teacher, the latent regressor / decoder (pretext_neck) and the decoder's mask token."""
    width = width_of(encoder_state)
    model = {f"encoder.{k}": v for k, v in encoder_state.items()}
    model |= {f"teacher.{k}": v for k, v in teacher_state.items()}
    model |= {"pretext_neck.regressor_blocks.0.norm1_q.weight": torch.randn(width),
              "pretext_neck.regressor_blocks.0.cross_attn.q.weight": torch.randn(width, width),
              "pretext_neck.decoder_blocks.0.attn.q_bias": torch.randn(width),
              "pretext_neck.head.weight": torch.randn(8192, width), "mask_token": torch.randn(1, 1, width)}
    return {"model": model, "epoch": 1599}


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
