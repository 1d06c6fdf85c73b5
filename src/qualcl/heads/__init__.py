"""Heads: projections, pixel heads, CBAM, MKCNet's blocks, mirror attention, GeM, fusion, U-Net/MAE/caption decoders."""

from qualcl.heads.caption_decoder import CaptionDecoder
from qualcl.heads.cbam import CBAM, ChannelGate, SpatialGate
from qualcl.heads.fusion import CrossAttentionFusion
from qualcl.heads.gem import GeM
from qualcl.heads.global_attention import GlobalAttentionBlock
from qualcl.heads.joint_encoding import JointEncodingMask
from qualcl.heads.mae_decoder import MAEDecoder
from qualcl.heads.meta_knowledge import MetaKnowledgeAssistanceBlock
from qualcl.heads.meta_label import MetaLabelGenerator
from qualcl.heads.mirror_attention import MirrorAttention, MirrorAttentionOutput
from qualcl.heads.pixel import ClusteringHead, PixelEmbeddingHead
from qualcl.heads.projection import ProjectionHead
from qualcl.heads.unet_decoder import DoubleConv, UNetDecoder

__all__ = [
    "CBAM",
    "CaptionDecoder",
    "ChannelGate",
    "ClusteringHead",
    "CrossAttentionFusion",
    "DoubleConv",
    "GeM",
    "GlobalAttentionBlock",
    "JointEncodingMask",
    "MAEDecoder",
    "MetaKnowledgeAssistanceBlock",
    "MetaLabelGenerator",
    "MirrorAttention",
    "MirrorAttentionOutput",
    "PixelEmbeddingHead",
    "ProjectionHead",
    "SpatialGate",
    "UNetDecoder",
]
