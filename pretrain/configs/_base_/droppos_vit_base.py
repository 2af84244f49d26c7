# DropPos ViT-B/16 (paper Sec. 3 and 4; defaults of Tab. 1-4 highlighted in the paper).
model = dict(
    arch="droppos",
    size="base",
    img_size=224,
    patch_size=16,
    pos_embed="sincos",  # fixed 2D sin-cos; "random" + pos_embed_trainable=True for Tab. S1
    pos_embed_trainable=False,
    mask_ratio=0.75,  # gamma: patches masked out of the encoder input
    pos_mask_ratio=0.75,  # gamma_pos: visible patches whose position embedding is replaced by the mask token
    decoder_dim=512,
    decoder_depth=2,
    decoder_heads=16,
    tau=0.1,  # attentive reconstruction temperature; inf turns it off
)
smoothing = dict(
    # "official": the authors' released code bit for bit (what produced the paper's numbers): a 16-wide,
    # 256-position table of which 196 columns are read, squared distance, column-normalised, sigma decayed
    # once per epoch as (1 - epoch / epochs) * sigma0. "paper": Eq. 5 and 7 as written (14x14 grid, Euclidean
    # distance, rows sum to 1, sigma decayed every optimizer step from sigma0 to sigma_t).
    mode="official",
    sigma0=1.0,
    sigma_t=0.0,
)
