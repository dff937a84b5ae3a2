"""benchmarks/helpers/profile_table.py: kernel names into categories, and a CPU profile whose parts add up."""

from __future__ import annotations

import pytest
import torch

from benchmarks.helpers.profile_table import CATEGORIES, category, profile_run


@pytest.mark.parametrize(("name", "want"), [
    ("aten::mm", "gemm"), ("sm90_xmma_gemm_bf16bf16_bf16f32", "gemm"), ("ampere_bf16_s16816gemm", "gemm"),
    ("aten::_scaled_dot_product_flash_attention", "attention"), ("flash_fwd_kernel", "attention"),
    ("aten::multinomial", "draw"), ("aten::_softmax", "draw"), ("aten::topk", "draw"),
    ("Memcpy DtoD (Device -> Device)", "copy"), ("aten::index_select", "copy"), ("aten::cat", "copy"),
    ("aten::rms_norm", "other"), ("aten::silu", "other"),
])  # fmt: skip
def test_category(name, want):
    assert category(name) == want


def test_attention_wins_over_the_softmax_inside_it():
    assert category("fmha_cutlassF_softmax") == "attention" and category("softmax_warp_forward") == "draw"


def test_cpu_profile_parts_add_up():
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def work():
        for _ in range(5):
            torch.softmax(a @ b, -1)

    out = profile_run(work, torch.device("cpu"), top=3)
    assert set(out["by_category_s"]) == set(CATEGORIES) and out["device_busy_s"] is None
    assert out["host_only_s"] == out["wall_s"] > 0
    assert out["by_category_s"]["gemm"] > 0 and out["by_category_s"]["draw"] > 0
    assert sum(out["by_category_share"].values()) == pytest.approx(1.0)
    assert len(out["top"]) == 3 and out["top"][0]["self_s"] >= out["top"][-1]["self_s"]
    # every listed row's time is its category's: the categories sum the rows' self times
    assert out["top"][0]["self_s"] <= out["by_category_s"][out["top"][0]["category"]] + 1e-12
