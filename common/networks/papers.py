"""The papers behind the registered networks: citations and published sizes (one home; the model cards list them)."""

GDLA_CITATION = (
    "Zheng H., Bozorgpour A., Merhof D., Zhang M. Gated Differential Linear Attention: A Linear-Time Decoder for "
    "High-Fidelity Medical Segmentation."
)
PVT_CITATION = (
    "Wang W. et al. PVT v2: Improved Baselines with Pyramid Vision Transformer. Computational Visual Media 8, "
    "415-424 (2022)."
)
EMCAD_CITATION = (
    "Rahman M. M., Munir M., Marculescu R. EMCAD: Efficient Multi-scale Convolutional Attention "
    "Decoding for Medical Image Segmentation. CVPR (2024)."
)
XATTNRES_CITATION = (
    "XAttnRes: Cross-Stage Attention Residuals for Medical Image Segmentation. arXiv:2604.03297; "
    "building on Attention Residuals, arXiv:2603.15031."
)
MLLA_UNET_CITATION = (
    "Jiang Y., Li Z., Chen X., Xie H., Cai J. MLLA-UNet: Mamba-like Linear Attention in an Efficient "
    "U-Shape Model for Medical Image Segmentation. arXiv:2410.23738."
)
KV_ATTENTION_CITATION = (
    "Hwa, Holmes, Drechsler. Exploring the Integration of Key-Value Attention Into Pure and Hybrid "
    "Transformers for Semantic Segmentation. arXiv:2503.18862; Borji A. Key-Value Transformer. arXiv:2305.19129."
)

#: the GDLA paper's PVT-v2-b2 encoder family: what every ``pvt_*`` network cites
PVT_DECODER_CITATIONS = (GDLA_CITATION, PVT_CITATION)
#: the ImageNet weights file of the PVT-v2-b2 encoder (PVT v2 release), passed as ``encoder_weights``
PVT_V2_B2_WEIGHTS = "pvt_v2_b2.pth"

#: Params (M) and FLOPs (G) of the GDLA paper's Synapse table, by registered network: ptflops 0.7.4 MACs with
#: every output head, at 1 x 224 x 224 and 9 classes, truncated to two decimals
#: (:func:`common.networks.complexity.paper_macs`)
GDLA_TABLE_COMPLEXITY = {
    "pvt_gdla": (32.13, 6.85),
    "pvt_linearattn": (28.25, 5.38),
    "pvt_selfattn": (28.25, 5.40),
    "pvt_diffattn": (28.75, 5.61),
}
#: EMCAD's own Params (M) and FLOPs (G), counted with thop at 3 x 256 x 256 and one class (the GDLA paper copies them)
EMCAD_COMPLEXITY = (26.76, 5.60)
#: MLLA-T as the MLLA-UNet paper gives it: about 28.5 M parameters and 6.0 G MACs at 224 x 224
MLLA_UNET_COMPLEXITY = (28.5, 6.0)
