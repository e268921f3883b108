"""Training lowers the loss on digits; checkpoints round-trip; bad checkpoints are refused."""

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from xoresnet.checkpoint import load_checkpoint, load_model, save_checkpoint
from xoresnet.config import NetworkConfig
from xoresnet.errors import CheckpointError, ConfigError
from xoresnet.network import build_network
from xoresnet.training import TrainOptions, train

BIN = os.path.join(os.path.dirname(sys.executable), "")


def digits_config(**kw) -> NetworkConfig:
    return NetworkConfig.preset("xoresnet-digits", input_size=8, in_channels=1, num_classes=10, input_levels=16,
                                timesteps=2, **kw)


def test_short_training_run_lowers_the_loss_and_resumes(tmp_path):
    out = tmp_path / "m.pt"
    opts = TrainOptions(dataset="digits", epochs=2, batch_size=32, lr=5e-3, out=str(out), limit_train=512,
                        limit_test=128, progress=False)
    cfg = digits_config()
    train(cfg, opts)
    ckpt = load_checkpoint(out)
    hist = ckpt.meta["history"]
    assert len(hist) == 2 and hist[1]["train_loss"] < hist[0]["train_loss"]
    assert hist[1]["test_loss"] < 2.30  # below chance-level cross-entropy ln(10) = 2.303
    assert ckpt.train_state["epoch"] == 2
    # resume for one more epoch: continues from epoch 2, keeps the history
    train(cfg, TrainOptions(**{**opts.__dict__, "epochs": 3, "resume": True}))
    ckpt = load_checkpoint(out)
    assert [h["epoch"] for h in ckpt.meta["history"]] == [1, 2, 3]


def test_checkpoint_round_trip(tmp_path):
    model = build_network(digits_config())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, {"dataset": "digits"}, quant={"version": 1, "vth_mant": {}})
    loaded, ckpt = load_model(path)
    assert ckpt.config == model.config and ckpt.meta == {"dataset": "digits"}
    assert ckpt.quant == {"version": 1, "vth_mant": {}}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "xoresnet-checkpoint", "version": 1, "payload": RunsCode(marker)}, bad)
    with pytest.raises(CheckpointError, match=r"pickled Python object \((posix|os)\.system\)"):
        load_checkpoint(bad)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_refuses_bad_files(tmp_path):
    model = build_network(digits_config())
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, {})
    data = good.read_bytes()
    cases = {
        "missing.pt": (None, "does not exist"),
        "truncated.pt": (data[: len(data) // 2], "corrupt or truncated"),
        "garbage.pt": (b"not a checkpoint at all", "corrupt"),
    }
    for name, (content, msg) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(path)
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an xoresnet checkpoint"):
        load_checkpoint(plain)
    nan = tmp_path / "nan.pt"
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    save_checkpoint(nan, model, {})
    with pytest.raises(CheckpointError, match="head.weight.*NaN"):
        load_checkpoint(nan)
    payload = torch.load(good, weights_only=True)
    payload["config"] = payload["config"].replace('"basic"', '"pyramid"')
    arch = tmp_path / "arch.pt"
    torch.save(payload, arch)
    with pytest.raises(ConfigError, match="block_type 'pyramid'"):
        load_checkpoint(arch)
    assert zipfile.is_zipfile(good)


def test_cli_bad_checkpoint_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    exe = os.path.join(os.path.dirname(sys.executable), "xoresnet-eval")
    r = subprocess.run([exe, str(bad), "--dataset", "digits"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_data_parallel_training_under_torchrun(tmp_path):
    """torchrun with 2 processes (Gloo on CPU; NCCL on GPUs): DDP trains, rank 0 alone writes and prints."""
    out = tmp_path / "ddp.pt"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "xoresnet.cli", "--dataset", "digits",
                        "--arch", "xoresnet-digits", "--width-factor", "0.125", "--timesteps", "2", "--epochs", "1",
                        "--limit-train", "128", "--limit-test", "64", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote ") == 1
    meta = load_checkpoint(out).meta
    assert meta["world_size"] == 2 and meta["history"][0]["epoch"] == 1
