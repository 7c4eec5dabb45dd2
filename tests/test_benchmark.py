"""The benchmark command: it times the training step a config really compiles, and its
FLOP count agrees with a count worked out by hand from the model's matrix products."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from vit_jax import benchmark
from vit_jax.configs import defaults


def bench_config(**model):
    """Width 64 on 8x8 digits with 2x2 patches: matrix products dominate the arithmetic."""
    c = defaults.get_config()
    c.dataset = "digits"
    c.pp.crop = 8
    c.pp.flip = False
    c.pp.channels = 1
    c.model.hidden_size = 64
    c.model.patches.size = (2, 2)
    c.model.transformer.mlp_dim = 256
    c.model.transformer.num_heads = 2
    c.model.transformer.num_layers = 2
    c.model.transformer.dropout_rate = 0.0
    c.model.transformer.attention_dropout_rate = 0.0
    for k, v in model.items():
        c.model[k] = v
    c.batch = 16
    return c


def matmul_flops_by_hand(batch, tokens, patches, patch_pixels, d, mlp, layers, classes):
    """Forward FLOPs of the matrix products (2 per multiply-add)."""
    embed = 2 * patches * patch_pixels * d
    block = 2 * tokens * (4 * d * d + 2 * d * mlp) + 2 * 2 * tokens * tokens * d
    head = 2 * d * classes
    return batch * (embed + layers * block + head)


def test_flop_count_matches_the_hand_count_and_ignores_loops():
    c = bench_config()
    by_hand = matmul_flops_by_hand(16, tokens=17, patches=16, patch_pixels=4, d=64, mlp=256, layers=2, classes=10)
    infer = benchmark.step_flops(c, 10, 16, "infer")
    # XLA also counts the element-wise work (norms, softmax, GELU), a few percent here.
    assert by_hand <= infer <= 1.1 * by_hand, (infer, by_hand)
    train = benchmark.step_flops(c, 10, 16, "train")
    assert 2.8 * infer <= train <= 3.3 * infer, (train, infer)  # backward: twice the forward
    # Micro-batches, scanned blocks and rematerialisation do not change the count.
    c.accum_steps = 4
    c.model.scan = True
    c.model.remat = "full"
    assert benchmark.step_flops(c, 10, 16, "train") == train


def test_run_reports_every_field_for_train_and_infer():
    c = bench_config()
    c.accum_steps = 2
    report = benchmark.run(
        c, name="tiny", num_classes=10, modes=["train", "infer", "input"], steps=2, warmup=1, matmul_size=512
    )
    train, infer, inp = report
    assert (train["mode"], infer["mode"], inp["mode"]) == ("train", "infer", "input")
    for r in (train, infer):
        assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
        assert r["images_per_s"] == pytest.approx(16 / (r["step_ms"] / 1e3))
        assert r["achieved_gflops"] == pytest.approx(r["gflops_per_image"] * r["images_per_s"])
        ratio = r["achieved_gflops"] / r["matmul_f32_gflops"]
        assert r["utilisation"] == pytest.approx(ratio)
        assert r["xla_memory_bytes"] > 0 and r["host_peak_bytes"] > 0 and r["compile_s"] > 0
        assert r["matmul_f32_gflops"] > 0 and r["matmul_bf16_gflops"] > 0
    assert train["accum_steps"] == 2 and train["gflops_per_image"] > 2.5 * infer["gflops_per_image"]
    assert inp["images_per_s"] > 0


def test_command_line(capsys):
    args = [
        "benchmark",
        "--model",
        "ViT-Ti_16",
        "--image_size",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
        "--scan",
        "--matmul_size",
        "512",
    ]
    assert benchmark.main([*args, "--mode", "infer", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["config"] == "ViT-Ti_16 32px" and r["mode"] == "infer" and r["batch"] == 2
    assert r["gflops_per_image"] > 0


def test_command_line_needs_exactly_one_of_config_and_model(capsys):
    assert benchmark.main(["benchmark"]) == 2
    assert "exactly one of --config" in capsys.readouterr().err


def test_model_flags_with_a_config_point_to_the_config_field(capsys):
    assert benchmark.main(["benchmark", "--config", "configs/quickstart.py", "--remat", "full"]) == 2
    assert "--config.model.remat=full" in capsys.readouterr().err


def test_profile_reports_time_per_op_kind(tmp_path, capsys):
    # The quick-start model: ViT-Ti's 12 blocks, compiled twice (the FLOP count's copy), took 10.4 s, not 4.8.
    args = ["benchmark", "--config", "configs/quickstart.py", "--batch", "2", "--steps", "2", "--json"]
    args += ["--matmul_size", "512"]
    assert benchmark.main([*args, "--mode", "infer", "--profile", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    ops = [r for r in rows if "op" in r]
    assert ops, rows
    assert all(r["ms_per_step"] > 0 and r["calls_per_step"] > 0 for r in ops)
    assert 0 < sum(r["share"] for r in ops) <= 1.0 + 1e-9


def test_steps_zero_compiles_only_and_reports_memory(capsys):
    args = ["benchmark", "--model", "ViT-Ti_16", "--image_size", "32", "--batch", "2", "--json"]
    assert (
        benchmark.main([*args, "--mode", "train", "--steps", "0", "--scan", "--remat", "full", "--matmul_size", "512"])
        == 0
    )
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["step_ms"] is None and r["utilisation"] is None
    assert r["compile_s"] > 0 and r["xla_memory_bytes"] > 0 and r["gflops_per_image"] > 0


def test_benchmark_on_a_two_device_mesh():
    """--cpu_devices 2: the step runs data-parallel on a 2-device mesh (a fresh process)."""
    # The quick-start model (4 blocks of width 64): with ViT-Ti's 12 blocks the test took 22 s, not 15.
    args = ["--config", "configs/quickstart.py", "--batch", "4", "--steps", "1", "--mode", "train"]
    args += ["--matmul_size", "512"]
    proc = subprocess.run(
        [sys.executable, "-m", "vit_jax.benchmark", *args, "--cpu_devices", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 2 and r["step_ms"] > 0 and r["utilisation"] > 0
