"""Population roles (:data:`calibration.integer_graph.POPULATION_ROLES`): set from the NIR node metadata, carried
through calibration, scheduling and ``integer_graph.h5``, and the only thing block detection and the report's
raster read (names are free); files written before roles existed get them from the names on load."""

from __future__ import annotations

import dataclasses
import json

import h5py
import nir
import numpy as np
import pytest

from calibration.architecture import architecture_graph
from calibration.float_graph import nir_to_float_graph
from calibration.integer_graph import (POPULATION_ROLES, IntegerGraph, load_integer_graph, role_from_name,
                                       save_integer_graph)
from calibration.quantize import calibrate_nir
from calibration.schedule import schedule
from conftest import REPO, firing_model, random_pixels, small_config
from hw_targets.report.page import raster_populations
from hw_targets.stats import find_blocks
from xoresnet.config import BLOCK_PRESETS, BlockSpec
from xoresnet.nir.export import export_nir

SPECS = {**BLOCK_PRESETS, "xor-or-spike-shortcut": BlockSpec(shortcut="spike")}


def _graph(variant: str) -> IntegerGraph:
    cfg = small_config(block=SPECS[variant])
    return schedule(calibrate_nir(export_nir(firing_model(cfg)), random_pixels(4, cfg, 0), candidates=1).graph)


@pytest.fixture(scope="module", params=["xor-xor", "sew-add", "xor-or-spike-shortcut", "spiking-resnet"])
def graph(request) -> IntegerGraph:
    return _graph(request.param)


def _renamed(graph: IntegerGraph) -> tuple[IntegerGraph, dict[str, str]]:
    """``graph`` with every population called ``pop<i>`` and every synapse ``syn<i>`` (nothing left to parse)."""
    new = {n: f"pop{i}" for i, n in enumerate(graph.populations)}
    rn = (lambda n: new.get(n, n))
    pops = {new[n]: dataclasses.replace(p, name=new[n]) for n, p in graph.populations.items()}
    syns = [dataclasses.replace(s, name=f"syn{i}", src=rn(s.src), dst=rn(s.dst)) for i, s in enumerate(graph.synapses)]
    return dataclasses.replace(graph, populations=pops, synapses=syns), new


def test_every_population_has_a_known_role_and_relays_copy_one_input(graph):
    assert {p.role for p in graph.populations.values()} <= set(POPULATION_ROLES)
    assert graph.populations["stem.sn"].role == "stem"
    for p in graph.populations.values():
        assert (p.role == "relay") == (p.kind == "relay")
        if p.role == "relay":
            assert len(graph.incoming(p.name)) == 1


def test_find_blocks_reads_roles_not_names(graph):
    """Renaming every population and synapse changes nothing but the names in the detected signals."""
    renamed, new = _renamed(graph)
    rn = (lambda signal: None if signal is None else [new[n] for n in signal])
    expected = [(b.merge, rn(b.block_input), rn(b.prev_input), rn(b.backbone), rn(b.shortcut), rn(b.output))
                for b in find_blocks(graph)]
    got = [(b.merge, b.block_input, b.prev_input, b.backbone, b.shortcut, b.output) for b in find_blocks(renamed)]
    assert len(got) == 3 and got == expected


def test_without_roles_there_are_no_blocks():
    """The same graph with every role ``other`` (what a NIR graph of another tool gives): no block is found."""
    g = _graph("xor-or")
    for p in g.populations.values():
        p.role = "other"
    assert find_blocks(g) == []


def test_roles_are_saved_and_files_without_them_derive_them_from_names(graph, tmp_path):
    path = tmp_path / "g.h5"
    save_integer_graph(graph, path)
    roles = {n: p.role for n, p in graph.populations.items()}
    assert {n: p.role for n, p in load_integer_graph(path).populations.items()} == roles
    with h5py.File(path, "a") as f:  # an integer_graph.h5 written before populations carried a role
        for g in f["populations"].values():
            del g.attrs["role"]
    old = load_integer_graph(path)
    assert {n: p.role for n, p in old.populations.items()} == roles
    assert [vars(b) for b in find_blocks(old)] == [vars(b) for b in find_blocks(graph)]
    assert role_from_name(dataclasses.replace(graph.populations["stem.sn"], name="conv1")) == "other"


def test_foreign_nir_populations_are_neutral():
    """A NIR graph without our metadata (another tool's): every population ``other``, no blocks."""
    rng = np.random.default_rng(0)
    lif = (lambda shape: nir.LIF(**{k: np.full(shape, v) for k, v in
                                    dict(tau=2.0, r=1.0, v_leak=0.0, v_threshold=1.0, v_reset=0.0).items()}))
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
             "conv": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(size=(2, 1, 3, 3)).astype(np.float32), stride=1,
                                padding=1, dilation=1, groups=1, bias=np.zeros(2, np.float32)),
             "a": lif((2, 4, 4)), "flat": nir.Flatten(start_dim=0, end_dim=-1, input_type={"input": np.array([2, 4, 4])}),
             "fc": nir.Affine(weight=rng.normal(size=(3, 32)).astype(np.float32), bias=np.zeros(3, np.float32)),
             "b": lif((3,)), "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "conv"), ("conv", "a"), ("a", "flat"), ("flat", "fc"), ("fc", "b"), ("b", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"xoresnet": json.dumps({"timesteps": 2})}, type_check=False)
    fg = nir_to_float_graph(g)
    assert {p.role for p in fg.populations.values()} == {"other"}
    assert find_blocks(architecture_graph(fg)) == []


def test_raster_skips_relays_and_gate_parts_by_role():
    layers = [{"name": n, "role": r} for n, r in
              (("x", "neuron"), ("y", "gate_part"), ("z", "relay"), ("w", "merge"))]
    report = {"raster": {"populations": {n["name"]: [] for n in layers}}, "statistics": {"layers": layers}}
    assert raster_populations(report) == ["x", "w"]


def test_report_schema_lists_the_roles():
    schema = json.loads((REPO / "hw_targets" / "report" / "schema.json").read_text())
    role = schema["$defs"]["stat_layer"]["properties"]["role"]
    assert set(role["enum"]) == set(POPULATION_ROLES)
