"""Several processes on this machine stand in for a pod: JAX's multi-controller runtime on
127.0.0.1 (free ports, short timeouts), CPU devices from JAX_NUM_CPU_DEVICES.

Every run here trains the same tiny config on the same global batches; only the
process and device layout changes. SGD is used so that results differ only by float32
reduction order (Adam's first steps would amplify those differences to the size of the
learning rate). Tolerance: 2e-5 absolute on every parameter and on every logged loss
after 8 steps. Measured on the 2-core CPU machine (1x4, 2x2, fsdp 1x4 and fsdp 2x2
against 1x1): at most 4.8e-7 on the losses and 6.0e-8 on the parameters.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

TOL = 2e-5
TINY = [
    "--config",
    "configs/quickstart.py",
    "--config.model.hidden_size=32",
    "--config.model.transformer.mlp_dim=64",
    "--config.model.transformer.num_layers=2",
    "--config.optim.name=sgd",
    "--config.lr.base=0.1",
    "--config.lr.warmup_steps=2",
    "--config.batch=32",
    "--config.total_steps=8",
    "--config.progress_every=1",
    "--config.eval_every=1000",
    "--config.checkpoint_every=4",
]
FSDP = ["--config.mesh=(('data',1),('fsdp',-1))", "--config.sharding=fsdp", "--config.fsdp_min_size=1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, *, processes=1, devices=1, extra=(), timeout=30):
    """Starts the run's processes; returns the Popen objects."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "vit_jax.main", *TINY, "--workdir", str(workdir), *extra]
    if processes > 1:
        port = free_port()
        cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
        cmd += [f"--initialization_timeout={timeout}"]
        cmds = [[*cmd, f"--process_id={i}"] for i in range(processes)]
    else:
        cmds = [cmd]
    return [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]


def finish(procs, timeout=150):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        assert p.returncode == 0, out[-3000:]
    return outs


def train(workdir, **kw):
    return finish(launch(workdir, **kw))


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


def params(workdir):
    with np.load(os.path.join(workdir, "model.npz")) as z:
        return {k: z[k] for k in z.files}


def assert_same(a, b):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 8
    np.testing.assert_allclose(la, lb, atol=TOL, rtol=0)
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=TOL, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """1 process x 1 device: the run every layout must reproduce."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    train(workdir)
    return workdir


def test_layouts_give_the_same_training(reference, tmp_path):
    train(tmp_path / "four", devices=4)
    outs = train(tmp_path / "two_by_two", processes=2, devices=2)
    assert "process 0 of 2, 4 devices (2 here, cpu)" in outs[0]
    assert_same(reference, tmp_path / "four")
    assert_same(reference, tmp_path / "two_by_two")
    with open(tmp_path / "two_by_two" / "run.json") as f:
        assert json.load(f)["final_eval"]["count"] == 359  # every test digit once, across both processes
    # Written once, by process 0: one train record per step, not one per process.
    assert len(losses(tmp_path / "two_by_two")) == 8


@pytest.mark.slow  # tests/test_streaming.py checks the same rows of the same batches in one process
def test_an_image_folder_trains_the_same_on_one_process_and_two(tmp_path):
    """Each process decodes and crops its own rows of the global batch of a folder of JPEGs; the
    two-process run is the one-process run (the 1x1 against 2x1 layouts of the test above)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 3)):
        for cls in ("a", "b", "c"):
            os.makedirs(tmp_path / "d" / split / cls)
            for i in range(n):
                pixels = rng.integers(0, 256, (12 + i, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "d" / split / cls / f"{i}.jpg")
    folder = [f"--config.dataset={tmp_path / 'd'}", "--config.pp.channels=3", "--config.data_workers=1"]
    train(tmp_path / "one", extra=folder)
    train(tmp_path / "two", processes=2, extra=folder)
    assert_same(tmp_path / "one", tmp_path / "two")


def test_fsdp_matches_data_parallel_and_splits_the_parameters(reference, tmp_path):
    train(tmp_path / "fsdp", devices=4, extra=FSDP)
    assert_same(reference, tmp_path / "fsdp")
    with open(tmp_path / "fsdp" / "sharding.json") as f:
        info = json.load(f)
    assert info["mesh"] == {"data": 1, "fsdp": 4}
    large = {k: v for k, v in info["params"].items() if np.prod(v["shape"]) >= 1000}
    assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in large
    for name, v in info["params"].items():
        if name in large:  # split 4 ways along one dimension that 4 divides
            assert v["split"] == 4 and v["spec"].count("fsdp") == 1, name
            assert v["shape"][v["spec"].index("fsdp")] % 4 == 0
        else:
            assert v["split"] == 1 and all(s is None for s in v["spec"]), name
    small = sum(4 * np.prod(v["shape"]) for k, v in info["params"].items() if k not in large)
    assert info["bytes_per_device"] == pytest.approx((info["bytes"] - small) / 4 + small, abs=8)


def test_fsdp_with_accumulation_remat_and_bfloat16(tmp_path):
    """The options that save memory combine with fsdp: same result as data parallelism.

    bfloat16 compute rounds differently when the reductions are split differently, so
    the tolerance here is bfloat16's: 2e-2 on losses and parameters after 8 steps
    (measured: 2.3e-3 on the losses, 3.5e-3 on the parameters).
    """
    opts = ["--config.accum_steps=2", "--config.model.scan=True", "--config.model.remat=full"]
    opts += ["--config.model.dtype=bfloat16"]
    train(tmp_path / "dp", devices=4, extra=opts)
    train(tmp_path / "fsdp", devices=4, extra=[*opts, *FSDP])
    np.testing.assert_allclose(losses(tmp_path / "dp"), losses(tmp_path / "fsdp"), atol=2e-2, rtol=0)
    pa, pb = params(tmp_path / "dp"), params(tmp_path / "fsdp")
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=2e-2, rtol=0, err_msg=k)
    with open(tmp_path / "fsdp" / "sharding.json") as f:
        info = json.load(f)
    # Scanned blocks are stacked (layers, ...): still split 4 ways.
    assert info["params"]["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]["split"] == 4


MEMORY_PROBE = """
import json
import jax
from vit_jax import benchmark, parallel, train
from vit_jax import config as config_lib
from vit_jax.configs import defaults

def step_bytes(sharding, batch):
    c = defaults.get_config()
    defaults.small_vit(c, hidden=64, mlp=256, heads=4, layers=2, patch=4)
    c.pp.crop, c.pp.channels, c.batch, c.model.scan, c.optim.name = 32, 3, batch, True, "adam"
    if sharding == "fsdp":
        c.mesh, c.sharding, c.fsdp_min_size = (("fsdp", -1),), "fsdp", 1000
    prog = train.build(config_lib.resolve(c), 10, steps=10)
    state = jax.eval_shape(prog.init_state, jax.random.PRNGKey(0))
    data = parallel.global_batch(benchmark.synthetic_batch(c, batch, 10), prog.data_sharding)
    return benchmark.memory_bytes(prog.train_step.lower(state, data, jax.random.PRNGKey(1)).compile())

print(json.dumps({s: [step_bytes(s, 64), step_bytes(s, 128)] for s in ("replicate", "fsdp")}))
"""


def test_fsdp_keeps_activations_split_by_batch():
    """XLA's buffer assignment of the train step on 4 devices, at global batch 64 and 128.

    Under fsdp each added image must cost a device what it costs under data parallelism:
    activations split by batch, weights gathered per layer. Without the activation
    constraint (parallel.constrain_batch) the partitioner gathered activations instead:
    2.1 times the memory per image on this model (2.7 times on ViT-L/16).
    """
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    per_image = {s: (m[s][1] - m[s][0]) / 64 for s in m}
    assert per_image["fsdp"] <= 1.05 * per_image["replicate"], per_image
    assert m["fsdp"][0] < m["replicate"][0]  # and the state is split


def test_two_processes_killed_then_resumed_as_one(reference, tmp_path):
    workdir = tmp_path / "resumed"
    procs = launch(workdir, processes=2, devices=2, extra=[*FSDP, "--config.total_steps=8"])
    first = workdir / "checkpoints" / "4"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    outs = [p.communicate()[0] for p in procs]
    assert first.exists(), "the 2-process run wrote no checkpoint:\n" + "\n".join(o[-2000:] for o in outs)
    # Resume with one process of 2 devices: Orbax reshards the fsdp state onto the new mesh.
    out = train(workdir, devices=2, extra=FSDP)[0]
    assert "Resumed from" in out
    step = int(out.split("Resumed from")[1].split("at step")[1].split(".")[0])
    assert 4 <= step < 8 or step == 8
    p_ref, p_res = params(reference), params(workdir)
    for k in p_ref:
        np.testing.assert_allclose(p_res[k], p_ref[k], atol=TOL, rtol=0, err_msg=k)


def test_a_missing_peer_ends_with_a_message(tmp_path):
    start = time.time()
    procs = launch(tmp_path / "alone", processes=2, devices=1, timeout=3)
    alone = procs[0]
    procs[1].kill()  # the peer never arrives
    procs[1].wait()
    out, _ = alone.communicate(timeout=60)
    assert alone.returncode == 3
    assert "not every process arrived at 127.0.0.1:" in out and "within 3 s" in out
    assert time.time() - start < 40


# ----------------------------------------------------------------------------- in-process pieces


def test_cluster_from_flags_environment_and_launchers():
    from vit_jax import parallel

    c = parallel.cluster_from("10.0.0.1:1234", 4, 2, environ={})
    assert (c.coordinator_address, c.num_processes, c.process_id, c.multi_process) == ("10.0.0.1:1234", 4, 2, True)
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert parallel.cluster_from(environ=env) == parallel.Cluster("h:1", 2, 1)
    assert parallel.cluster_from(process_id=0, environ=env).process_id == 0  # a flag beats the environment
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_JOB_ID": "7"}
    assert parallel.cluster_from(environ=slurm).detected == "slurm"
    assert parallel.cluster_from(environ={"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).multi_process is False
    assert parallel.cluster_from(environ={"OMPI_COMM_WORLD_SIZE": "4"}).detected == "openmpi"
    assert parallel.cluster_from(environ={"TPU_WORKER_HOSTNAMES": "a,b"}).detected == "tpu"
    with pytest.raises(parallel.ParallelError, match="missing --process_id"):
        parallel.cluster_from("h:1", 2, None, environ={})
    with pytest.raises(parallel.ParallelError, match="outside 0..1"):
        parallel.cluster_from("h:1", 2, 2, environ={})
    with pytest.raises(parallel.ParallelError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        parallel.cluster_from(environ={"JAX_NUM_PROCESSES": "two"})


def test_mesh_shapes_and_their_errors():
    from vit_jax import parallel

    assert parallel.mesh_shape((("data", -1),), 8) == (("data",), (8,))
    assert parallel.mesh_shape((("data", 2), ("fsdp", -1)), 8) == (("data", "fsdp"), (2, 4))
    assert parallel.mesh_shape((("data", 2), ("model", 2), ("fsdp", 2)), 8)[1] == (2, 2, 2)
    for spec, match in [
        ((("data", 3), ("fsdp", -1)), "do not split"),
        ((("data", 2), ("fsdp", 2)), "has 4 devices but there are 8"),
        ((("model", -1),), "no axis to split the batch"),
        ((("data", -1), ("fsdp", -1)), "at most one -1"),
        ((("data", 4), ("data", 2)), "names an axis twice"),
    ]:
        with pytest.raises(parallel.ParallelError, match=match):
            parallel.mesh_shape(spec, 8)


def test_which_meshes_run_one_program_at_a_time():
    """Several CPU devices in this process: the loops wait for each step (XLA's CPU all-reduce can
    hang when steps overlap; experiments/cpu_collective_hang.py). Anything else keeps async dispatch."""
    from types import SimpleNamespace as NS

    import jax

    from vit_jax import parallel

    me = jax.process_index()

    def mesh(*devices):
        return NS(devices=np.array([NS(platform=p, process_index=i) for p, i in devices], dtype=object))

    assert parallel.one_program_at_a_time(mesh(("cpu", me), ("cpu", me)))
    assert parallel.one_program_at_a_time(mesh(("cpu", me), ("cpu", me), ("cpu", me + 1), ("cpu", me + 1)))
    assert not parallel.one_program_at_a_time(mesh(("cpu", me)))  # one device: no all-reduce here
    assert not parallel.one_program_at_a_time(mesh(("cpu", me), ("cpu", me + 1)))  # one per process
    assert not parallel.one_program_at_a_time(mesh(("gpu", me), ("gpu", me)))
    assert not parallel.one_program_at_a_time(parallel.make_mesh())  # this test process: one CPU device


def test_fsdp_spec_by_hand():
    from jax.sharding import PartitionSpec as P

    from vit_jax import parallel

    assert parallel.fsdp_spec((768, 3072), 4, 1000) == P(None, "fsdp")  # the largest dimension
    assert parallel.fsdp_spec((3072, 768), 4, 1000) == P("fsdp", None)
    assert parallel.fsdp_spec((6, 1000), 4, 1000) == P(None, "fsdp")
    assert parallel.fsdp_spec((7, 999), 4, 1000) == P()  # nothing 4 divides
    assert parallel.fsdp_spec((10, 10), 4, 1000) == P()  # small: replicated
    assert parallel.fsdp_spec((768, 3072), 1, 1000) == P()


def test_config_errors_name_the_mesh_and_the_batch():
    from vit_jax import config as config_lib
    from vit_jax.configs import defaults

    c = defaults.get_config()
    defaults.small_vit(c, hidden=32, mlp=64, heads=4, layers=2, patch=2)
    c.pp.crop, c.batch = 8, 24
    c.mesh = (("data", 2), ("fsdp", -1))
    with pytest.raises(config_lib.ConfigError, match=r"batch=24 is not divisible by the device count \(8\) times"):
        c.accum_steps = 2
        config_lib.validate(c, num_devices=8)
    c.mesh = (("data", 2), ("model", -1))
    c.batch = 6
    c.accum_steps = 1
    config_lib.validate(c, num_devices=8)  # the batch is split over `data` only: 6 % 2 == 0
    c.mesh = (("data", 3),)
    with pytest.raises(config_lib.ConfigError, match="has 3 devices but there are 8"):
        config_lib.validate(c, num_devices=8)
    c.mesh = (("data", -1),)
    c.sharding = "zero3"
    with pytest.raises(config_lib.ConfigError, match="config.sharding='zero3': choose one of replicate, fsdp"):
        config_lib.validate(c, num_devices=8)


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
    """A preemption notice may reach one host only: every process must stop at the same step and
    save it together (the collective decision), and the run resumes from that step."""
    workdir = tmp_path / "stopped"
    long_run = ["--config.total_steps=400", "--config.checkpoint_every=1000"]
    procs = launch(workdir, processes=2, devices=1, extra=long_run)
    head = []
    deadline = time.time() + 120
    while time.time() < deadline:  # process 0 logs every step; wait until the loop runs
        line = procs[0].stdout.readline()
        head.append(line)
        if not line or line.split("|")[0].strip().endswith("step 3/400"):
            break
    procs[1].send_signal(signal.SIGTERM)  # process 0 receives nothing itself
    outs = finish(procs)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert results[0]["stopped"] == "SIGTERM", "".join(head)[-2000:] + outs[0][-2000:]
    assert results[0] == results[1]
    step = results[0]["step"]
    assert 3 <= step < 400
    assert (workdir / "checkpoints" / str(step)).is_dir()
    assert not (workdir / "model.npz").exists()
    out = train(workdir, extra=[f"--config.total_steps={step + 2}"])[0]
    assert f"Resumed from {workdir / 'checkpoints'} at step {step}." in out
    assert json.loads(out.strip().splitlines()[-1])["count"] > 0  # finished: the final evaluation ran
