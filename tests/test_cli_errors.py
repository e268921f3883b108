"""Bad command-line values of xoresnet-train and xoresnet-eval: usage errors (exit 2, one line), never
an internal error, a "model not deployable" code or a silent run; malformed checkpoints: exit 3."""

import json
import re

import pytest
import torch

from xoresnet.checkpoint import save_checkpoint
from xoresnet.cli import eval_main, train_main
from xoresnet.network import build_network

from conftest import small_config


def run(main, argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``main(argv)`` (the CLIs always end with ``sys.exit``)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected_code: int, pattern: str) -> None:
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "error: " in err and "internal error" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


TRAIN = ["--dataset", "digits", "--arch", "xoresnet-digits", "--width-factor", "0.125", "--timesteps", "2",
         "--epochs", "1", "--limit-train", "32", "--limit-test", "16", "--no-progress"]

BAD_TRAIN_FLAGS = {
    "batch-size-0": (["--batch-size", "0"], r"--batch-size: must be > 0, got 0"),
    "lr-negative": (["--lr", "-1"], r"--lr: must be > 0, got -1"),
    "lr-nan": (["--lr", "nan"], r"--lr: must be > 0"),
    "epochs-0": (["--epochs", "0"], r"--epochs: must be > 0, got 0"),
    "epochs-negative": (["--epochs", "-3"], r"--epochs: must be > 0"),
    "epochs-not-int": (["--epochs", "2.5"], r"--epochs: '2.5' is not an integer"),
    "weight-decay-negative": (["--weight-decay", "-0.1"], r"--weight-decay: must be >= 0"),
    "limit-test-0": (["--limit-test", "0"], r"--limit-test: must be > 0"),
    "calib-samples-0": (["--calib-samples", "0"], r"--calib-samples: must be > 0"),
    "timesteps-0": (["--timesteps", "0"], r"timesteps must be in 1\.\.4096, got 0"),
    "du-off-grid": (["--du", "0.3"], r"du=0.3 is not on Loihi's 12-bit grid"),
    "du-nan": (["--du", "nan"], r"du=nan is not on Loihi's 12-bit grid"),
    "dv-off-grid": (["--dv", "2"], r"dv=2.0 is not on Loihi's 12-bit grid"),
    "vth-0": (["--vth", "0"], r"vth must be positive"),
    "vth-inf": (["--vth", "inf"], r"vth must be positive and finite"),
    "width-factor-0": (["--width-factor", "0"], r"width_factor in \(0, 16384\], got 64 and 0.0"),
    "unknown-arch": (["--arch", "resnet9000"], r"--arch: invalid choice: 'resnet9000'"),
    "unknown-block": (["--block", "pyramid"], r"--block: invalid choice"),
    "mid-in-bottleneck": (["--arch", "xoresnet50", "--selection", "mid"],
                          r"selection 'mid' is not defined for Bottleneck blocks \(architecture 'xoresnet50'\)"),
    "add-with-xor-selection": (["--merge", "add"], r"merge 'add' .* use selection 'none'"),
    "unknown-device": (["--device", "tpu"], r"--device: 'tpu' is not a device"),
    "missing-cuda-device": (["--device", "cuda:99"], r"--device: no device cuda:99 on this machine"),
    "qat-without-init": (["--qat"], r"--qat fine-tunes the float model of --init: give both or neither"),
    "init-without-qat": (["--init", "models/xoresnet-digits.pt"], r"give both or neither"),
}


@pytest.mark.parametrize("flags,pattern", BAD_TRAIN_FLAGS.values(), ids=BAD_TRAIN_FLAGS.keys())
def test_bad_train_flags_are_one_line_usage_errors(flags, pattern, tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, err = run(train_main, TRAIN + ["--out", str(out)] + flags, capsys)
    assert_one_line_error(code, err, 2, r"^xoresnet-train: error: .*" + pattern)
    assert not out.exists()


def test_missing_required_flag_is_one_line(capsys):
    code, err = run(train_main, ["--arch", "xoresnet-digits"], capsys)
    assert_one_line_error(code, err, 2, r"required: --dataset")


def test_resume_asking_for_no_more_epochs_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, _ = run(train_main, TRAIN + ["--out", str(out)], capsys)
    assert code == 0 and out.exists()
    before = out.read_bytes()
    code, err = run(train_main, TRAIN + ["--out", str(out), "--resume"], capsys)
    assert_one_line_error(code, err, 2, r"nothing to train: --epochs 1, and .* has already trained 1 epoch")
    assert out.read_bytes() == before


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 10-class 8x8 model saved as a digits checkpoint (untrained: these tests only parse flags)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_network(small_config(num_classes=10)), {"dataset": "digits"})
    return path


BAD_EVAL_FLAGS = {
    "batch-size-0": (["--batch-size", "0"], r"--batch-size: must be > 0"),
    "limit-0": (["--limit", "0"], r"--limit: must be > 0, got 0"),
    "limit-negative": (["--limit", "-5"], r"--limit: must be > 0"),
    "calib-samples-0": (["--calib-samples", "0"], r"--calib-samples: must be > 0"),
    "unknown-split": (["--split", "val"], r"--split: invalid choice: 'val'"),
    "unknown-dataset": (["--dataset", "emnist"], r"--dataset: invalid choice: 'emnist'"),
    "unknown-device": (["--device", "gpu"], r"--device: 'gpu' is not a device"),
    "dataset-of-other-images": (["--dataset", "cifar10"],
                                r"--dataset cifar10: the network takes 8x8x1 images .* cifar10 has 32x32x3 images"),
}


@pytest.mark.parametrize("flags,pattern", BAD_EVAL_FLAGS.values(), ids=BAD_EVAL_FLAGS.keys())
def test_bad_eval_flags_are_one_line_usage_errors(flags, pattern, tiny_checkpoint, capsys):
    code, err = run(eval_main, [str(tiny_checkpoint)] + flags, capsys)
    assert_one_line_error(code, err, 2, r"^xoresnet-eval: error: .*" + pattern)


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        eval_main(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: xoresnet-eval")


# ---------------------------------------------------------------------- malformed checkpoints: exit 3

def _edit_json(entry: str, edit):
    def apply(payload):
        value = json.loads(payload[entry])
        payload[entry] = json.dumps(edit(value))
    return apply


def _set(entry: str, key: str, value):
    return _edit_json(entry, lambda d: {**d, key: value})


def _set_nested(entry: str, outer: str, key: str, value):
    return _edit_json(entry, lambda d: {**d, outer: {**d[outer], key: value}})


def _replace(entry: str, value):
    def apply(payload):
        payload[entry] = value
    return apply


def _retype_tensor(payload):
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = payload["state_dict"][name].double()


GOOD_TRAIN_STATE = {"epoch": 1, "optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state()}

MALFORMED = {
    "meta-list": (_replace("meta", "[1, 2]"), r"'meta' must be a JSON object, got \[1, 2\]"),
    "meta-dataset-number": (_set("meta", "dataset", 5), r"'meta' field 'dataset' must be a string or null, got 5"),
    "meta-history-not-list": (_set("meta", "history", "abc"), r"'meta' field 'history' must be an array"),
    "meta-history-items": (_set("meta", "history", [1]), r"'meta' field 'history' must be an array of items"),
    "meta-test-accuracy-text": (_set("meta", "test_accuracy", "high"), r"field 'test_accuracy' must be a finite"),
    "meta-float-parent-list": (_set("meta", "float_parent", []), r"field 'float_parent' must be an object or null"),
    "meta-float-parent-path": (_set("meta", "float_parent", {"path": 3}), r"'float_parent' field 'path' must be a"),
    "meta-float-parent-no-path": (_set("meta", "float_parent", {}), r"'float_parent' lacks the field 'path'"),
    "meta-not-json": (_replace("meta", "{nope"), r"entry 'meta' is not JSON text"),
    "config-list": (_replace("config", "[]"), r"network config must be a JSON object, got \[\]"),
    "config-blocks-text": (_set("config", "blocks_per_stage", "ab"),
                           r"field 'blocks_per_stage' must be an array of items each an integer, got \"ab\""),
    "config-blocks-bool": (_set("config", "blocks_per_stage", [True, 2]), r"field 'blocks_per_stage' must be"),
    "config-timesteps-float": (_set("config", "timesteps", 2.5), r"field 'timesteps' must be an integer, got 2.5"),
    "config-width-text": (_set("config", "width_factor", "wide"), r"field 'width_factor' must be a finite number"),
    "config-stem-number": (_set("config", "stem", 1), r"field 'stem' must be a string or null"),
    "config-neuron-du-text": (_set_nested("config", "neuron", "du", "x"),
                              r"network config 'neuron' field 'du' must be a finite number, got \"x\""),
    "config-neuron-learn-decay": (_set_nested("config", "neuron", "learn_decay", 1), r"'learn_decay' must be true or"),
    "config-block-list": (_set("config", "block", []), r"network config 'block' must be a JSON object"),
    "config-block-selection-number": (_set_nested("config", "block", "selection", 2), r"'selection' must be a string"),
    "config-unknown-key": (_set("config", "colour", "blue"), r"unknown network config key\(s\): colour"),
    "quant-list": (_replace("quant", "[]"), r"'quant' must be a JSON object"),
    "quant-vth-mant-float": (_replace("quant", json.dumps({"version": 1, "vth_mant": {"stem.sn": 1.5}})),
                             r"'quant' field 'vth_mant' must be an object of values each an integer"),
    "quant-vth-mant-text": (_replace("quant", json.dumps({"version": 1, "vth_mant": {"stem.sn": "abc"}})),
                            r"field 'vth_mant' must be"),
    "quant-no-vth-mant": (_replace("quant", json.dumps({"version": 1})), r"'quant' lacks the field 'vth_mant'"),
    "quant-version-text": (_replace("quant", json.dumps({"version": "one", "vth_mant": {}})), r"field 'version' must"),
    "quant-meta-list": (_replace("quant", json.dumps({"version": 1, "vth_mant": {}, "meta": []})), r"field 'meta'"),
    "version-bool": (_replace("version", True), r"has checkpoint version True"),
    "version-0": (_replace("version", 0), r"has checkpoint version 0"),
    "state-dict-list": (_replace("state_dict", [1]), r"'state_dict' must map names to tensors"),
    "tensor-dtype": (_retype_tensor, r"is \(.*\) torch.float64, its config needs \(.*\) torch.float32"),
    "train-state-list": (_replace("train_state", []), r"'train_state' must be a dict"),
    "train-state-epoch-text": (_replace("train_state", {**GOOD_TRAIN_STATE, "epoch": "1"}),
                               r"train_state 'epoch' must be an integer >= 0"),
    "train-state-epoch-negative": (_replace("train_state", {**GOOD_TRAIN_STATE, "epoch": -1}),
                                   r"train_state 'epoch' must be an integer >= 0, got -1"),
    "train-state-optimizer": (_replace("train_state", {**GOOD_TRAIN_STATE, "optimizer": [1]}),
                              r"train_state 'optimizer' is not an optimizer state_dict"),
    "train-state-rng": (_replace("train_state", {**GOOD_TRAIN_STATE, "rng": torch.zeros(3)}),
                        r"train_state 'rng' is not a random generator state"),
}


@pytest.mark.parametrize("edit,pattern", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_checkpoints_are_bad_input_files(edit, pattern, tiny_checkpoint, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["quant"] = json.dumps({"version": 1, "vth_mant": {}})
    payload["train_state"] = dict(GOOD_TRAIN_STATE)
    edit(payload)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    assert torch.load(bad, weights_only=True)["format"] == "xoresnet-checkpoint"  # still weights-only loadable
    code, err = run(eval_main, [str(bad), "--limit", "4"], capsys)
    assert_one_line_error(code, err, 3, r"^xoresnet-eval: error: .*" + pattern)


def test_unsupported_but_well_formed_config_stays_not_deployable(tiny_checkpoint, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    bad = tmp_path / "bottleneck-mid.pt"
    config = json.loads(payload["config"])
    payload["config"] = json.dumps({**config, "block_type": "bottleneck", "block": {**config["block"],
                                                                                   "selection": "mid"}})
    torch.save(payload, bad)
    code, err = run(eval_main, [str(bad)], capsys)
    assert_one_line_error(code, err, 4, r"selection 'mid' is not defined for Bottleneck blocks \(architecture 'test'\)")


def test_meta_naming_a_dataset_the_network_cannot_take(tiny_checkpoint, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["meta"] = json.dumps({"dataset": "fashion-mnist"})
    bad = tmp_path / "fashion.pt"
    torch.save(payload, bad)
    code, err = run(eval_main, [str(bad)], capsys)
    assert_one_line_error(code, err, 3, r"its meta names dataset 'fashion-mnist', but the network takes 8x8x1")


def test_resume_with_a_training_state_of_another_model_is_a_bad_input_file(tmp_path, capsys):
    out = tmp_path / "m.pt"
    code, _ = run(train_main, TRAIN + ["--out", str(out)], capsys)
    assert code == 0
    payload = torch.load(out, weights_only=True)
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    payload["train_state"]["optimizer"] = other.state_dict()  # one parameter group of the wrong size
    torch.save(payload, out)
    code, err = run(train_main, TRAIN + ["--out", str(out), "--epochs", "2", "--resume"], capsys)
    assert_one_line_error(code, err, 3, r"cannot resume .*: its training state does not fit the model")
