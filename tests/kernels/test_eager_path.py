"""Eager calls of the fused kernels skip the torch.library op wrapper, with the op's exact results."""

import json
import subprocess
import sys

import pytest
import torch

from qualcl import kernels

INFO_NCE = sys.modules["qualcl.kernels.fused_info_nce"]
TOPK = sys.modules["qualcl.kernels.topk"]


def _info_nce(monkeypatch, through_op: bool, top_k):
    monkeypatch.setattr(INFO_NCE, "through_custom_op", lambda: through_op)
    torch.manual_seed(0)
    q = torch.randn(24, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    w = torch.rand(24, dtype=torch.float64, requires_grad=True)
    loss = kernels.fused_info_nce(
        q, c, positive_index=torch.arange(24), weights=w, top_k=top_k, chunk_size=7, column_chunk_size=9, impl="torch"
    )
    loss.backward()
    return loss.detach(), q.grad, c.grad, w.grad


@pytest.mark.parametrize("top_k", [None, 5])
def test_eager_info_nce_equals_the_custom_op_bitwise(monkeypatch, top_k):
    eager = _info_nce(monkeypatch, False, top_k)
    op = _info_nce(monkeypatch, True, top_k)
    for a, b in zip(eager, op, strict=True):
        assert torch.equal(a, b)


def test_eager_topk_equals_the_custom_op(monkeypatch):
    q, c = torch.randn(20, 6), torch.randn(33, 6)
    results = []
    for through_op in (False, True):
        monkeypatch.setattr(TOPK, "through_custom_op", lambda through_op=through_op: through_op)
        results.append(kernels.topk_similarity(q, c, 4, exclude_index=torch.arange(20), impl="torch", chunk_size=6))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_a_first_eager_call_does_not_import_the_compiler_stack():
    code = """
import json, sys, torch
from qualcl import kernels
from qualcl.losses import InfoNCE
q = torch.randn(64, 16, requires_grad=True)
kernels.fused_info_nce(q, q.detach(), positive_index=torch.arange(64), impl="torch").backward()
InfoNCE(impl="torch")(q, torch.randn(64, 16)).backward()
kernels.topk_similarity(q, q, 3, impl="torch")
print(json.dumps([m for m in ("torch._dynamo", "sympy", "triton") if m in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_compiled_calls_go_through_the_registered_op():
    calls = []

    def loss(q, c):
        calls.append(INFO_NCE.through_custom_op())
        return kernels.fused_info_nce(q, c, positive_index=torch.arange(8), impl="torch")

    q, c = torch.randn(8, 4), torch.randn(8, 4)
    eager = loss(q, c)
    compiled = torch.compile(loss, backend="eager", fullgraph=False)(q, c)
    assert calls[0] is False and True in calls[1:]
    assert torch.allclose(eager, compiled)
