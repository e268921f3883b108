"""Training lowers the loss on digits; checkpoints round-trip; bad checkpoints are refused."""

import json
import math
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from conftest import firing_model, small_config
from xoresnet import training
from xoresnet.checkpoint import load_checkpoint, load_model, save_checkpoint
from xoresnet.cli import eval_main
from xoresnet.config import NetworkConfig
from xoresnet.data import load_dataset
from xoresnet.errors import CheckpointError, ConfigError, UnsupportedModelError
from xoresnet.network import build_network
from xoresnet.training import DistContext, TrainOptions, eval_shard, evaluate, train

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


def tiny_options(out, **kw) -> TrainOptions:
    return TrainOptions(**{**dict(dataset="digits", epochs=2, batch_size=16, lr=5e-3, out=str(out), limit_train=48,
                                  limit_test=16, progress=False), **kw})


def trained_parameters(path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("first_epochs", [1, 2], ids=["extended-from-1-epoch", "interrupted-after-epoch-1"])
def test_resume_continues_the_learning_rate_schedule(first_epochs, tmp_path, monkeypatch):
    """1 epoch, then --resume to 2 epochs (a run extended, or one interrupted after its first epoch)
    gives bit for bit the weights of an uninterrupted 2-epoch run, augmentation included; the
    resumed epoch learns at the cosine rate of the new total (lr / 2), not at lr = 0."""
    monkeypatch.setitem(training.AUGMENT, "digits", ("translate", 1))
    cfg = digits_config(width_factor=0.125)
    train(cfg, tiny_options(tmp_path / "straight.pt"))
    resumed = tmp_path / "resumed.pt"
    save = training.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tiny_options(resumed, epochs=first_epochs))
    after_first = trained_parameters(resumed)
    train(cfg, tiny_options(resumed, resume=True))
    final = trained_parameters(resumed)
    straight = trained_parameters(tmp_path / "straight.pt")
    assert all(torch.equal(final[n], straight[n]) for n in straight)
    assert sum(not torch.equal(final[n], after_first[n]) for n in final) >= len(final) // 2
    history = load_checkpoint(resumed).meta["history"]
    assert [(h["epoch"], h["lr"]) for h in history] == [(1, 5e-3), (2, pytest.approx(2.5e-3, rel=1e-12))]
    assert history == load_checkpoint(tmp_path / "straight.pt").meta["history"]


@pytest.mark.parametrize("samples,world", [(0, 2), (1, 2), (7, 3), (63, 2), (64, 4), (5, 8)])
def test_eval_shards_count_every_test_sample_exactly_once(samples, world):
    shards = [list(eval_shard(samples, DistContext(rank, world))) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_eval_json_reports_accuracy_and_firing_rates_float_and_integer(tmp_path, capsys):
    """xoresnet-eval --json --integer on a tiny firing model: every field, and the float figures
    equal a direct :func:`evaluate` of the checkpoint."""
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, firing_model(small_config(num_classes=10)), {"dataset": "digits"})
    with pytest.raises(SystemExit) as exc:
        eval_main([str(path), "--json", "--integer", "--limit", "24", "--calib-samples", "16", "--device", "cpu"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert {"checkpoint", "dataset", "split", "timesteps", "qat", "float", "integer"} <= set(report)
    assert (report["dataset"], report["split"], report["timesteps"], report["qat"]) == ("digits", "test", 2, False)
    flt, integer = report["float"], report["integer"]
    model, _ = load_model(path)
    direct = evaluate(model, load_dataset("digits", "test", limit=24))
    assert flt["samples"] == integer["samples"] == 24
    assert flt["accuracy"] == direct["accuracy"] and flt["loss"] == pytest.approx(direct["loss"])
    assert math.isclose(integer["accuracy_drop_pp"], 100 * (flt["accuracy"] - integer["accuracy"]))
    assert integer["calibration_samples"] == 16 and 0 <= integer["accuracy"] <= 1
    neurons = set(model.neurons())
    assert set(flt["spikes"]["layers"]) == neurons
    rates = [v["firing_rate"] for v in flt["spikes"]["layers"].values()]
    assert all(0 <= r <= 1 for r in rates) and any(r > 0 for r in rates)
    assert neurons <= set(integer["layers"])
    assert all(0 <= v["firing_rate"] <= 1 for v in integer["layers"].values())
    assert {v["kind"] for n, v in integer["layers"].items() if n in neurons} == {"neuron"}
    assert integer["neuron_spikes_per_sample"] > 0


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
    with pytest.raises(UnsupportedModelError, match="not writing .*head.weight.*NaN"):
        save_checkpoint(good, model, {})  # a diverged model is not written; the file keeps what it held
    load_checkpoint(good)
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["head.weight"] = model.head.weight.detach().clone()
    torch.save(payload, nan)
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
    """torchrun with 2 processes (Gloo on CPU; NCCL on GPUs): DDP trains, rank 0 alone writes and prints,
    and the held-out evaluation counts each of an odd number of test samples once, on the saved model."""
    out = tmp_path / "ddp.pt"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "xoresnet.cli", "--dataset", "digits",
                        "--arch", "xoresnet-digits", "--width-factor", "0.125", "--timesteps", "2", "--epochs", "1",
                        "--limit-train", "128", "--limit-test", "63", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote ") == 1
    meta = load_checkpoint(out).meta
    assert meta["world_size"] == 2 and meta["history"][0]["epoch"] == 1
    record = meta["history"][0]
    assert record["test_samples"] == 63  # DistributedSampler padded to 64
    single = evaluate(load_model(out)[0], load_dataset("digits", "test", limit=63))
    assert record["test_accuracy"] == single["accuracy"]
    assert record["test_loss"] == pytest.approx(single["loss"], rel=1e-5)
