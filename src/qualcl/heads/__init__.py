"""Heads: projection MLPs, CBAM attention, and MKCNet's attention, assistance and meta-label blocks."""

from qualcl.heads.cbam import CBAM, ChannelGate, SpatialGate
from qualcl.heads.global_attention import GlobalAttentionBlock
from qualcl.heads.joint_encoding import JointEncodingMask
from qualcl.heads.meta_knowledge import MetaKnowledgeAssistanceBlock
from qualcl.heads.meta_label import MetaLabelGenerator
from qualcl.heads.projection import ProjectionHead

__all__ = [
    "CBAM",
    "ChannelGate",
    "GlobalAttentionBlock",
    "JointEncodingMask",
    "MetaKnowledgeAssistanceBlock",
    "MetaLabelGenerator",
    "ProjectionHead",
    "SpatialGate",
]
