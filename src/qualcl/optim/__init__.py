"""Optimizer wrappers: the meta-auxiliary ("learning to learn") step of MAXL and MKCNet."""

from qualcl.optim.meta_auxiliary import MetaAuxiliaryOptimizer, MetaMode, TaskForward

__all__ = ["MetaAuxiliaryOptimizer", "MetaMode", "TaskForward"]
