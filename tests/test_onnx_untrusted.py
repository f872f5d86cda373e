"""An ONNX file from someone else is untrusted input: a graph that fails when it runs is an
ExportError naming the file and the fix (not onnxruntime's traceback), and a graph that holds an
op `anomaly.export` never writes (a Loop of 2**62 iterations hung predict) is refused at load;
the allow-list (`onnx_checks.EXPORTED_OPS`) is checked against fresh exports of every kind."""

from __future__ import annotations

import shutil

import pytest
from helpers import fresh_python

onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'anomaly[export]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

from onnx import TensorProto, helper

from anomaly.cli import main
from anomaly.config import Config
from anomaly.export import ExportError, OnnxDetector, predict_each, predict_onnx
from anomaly.onnx_checks import EXPORTED_OPS, graph_ops
from anomaly.pipeline import train_run

SIZE = 8
META = {
    "format": "anomaly-onnx/1",
    "method": "patchknn",
    "size": str(SIZE),
    "channels": "3",
    "threshold": "0.5",
    "threshold_rule": "manual",
    "threshold_params": "{}",
    "decode": "full",
}
FIX = r"export the run again \(`python -m anomaly export --run RUN`\)"


def _score(out: str = "scores"):
    return helper.make_node("ReduceMean", ["images"], [out], axes=[1, 2, 3], keepdims=0)


def _map(out: str = "maps"):
    return helper.make_node("ReduceMean", ["images"], [out], axes=[1], keepdims=0)


def _file(path, nodes, initializers=(), domains=(), functions=()):
    """A small ONNX file whose metadata claims the format, with the graph `nodes`."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("maps", TensorProto.FLOAT, None),
        ],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", 13)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 8
    for key, value in META.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _image(tiny_cookies):
    return min((tiny_cookies / "test" / "good").glob("*.png"))


def _reshape_fails(path):
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [7, 11])
    nodes = [_score(), helper.make_node("Reshape", ["images", "shape"], ["maps"])]
    return _file(path, nodes, [shape])


# --- 1. a graph that fails when it runs: the file's fault, named with the fix ------------------
def test_a_graph_that_cannot_run_is_an_export_error_naming_the_file(tiny_cookies, tmp_path):
    bad = _reshape_fails(tmp_path / "reshape.onnx")
    said = rf"reshape.onnx: its graph failed \(Reshape node: .*cannot be reshaped.*\).*{FIX}"
    with pytest.raises(ExportError, match=said) as raised:
        predict_onnx(bad, [_image(tiny_cookies)])
    assert "onnxruntime_src" not in str(raised.value)  # no source path or C++ signature
    # a batch job stops too: the graph, not the image, is at fault (an unreadable image is not)
    with pytest.raises(ExportError, match="reshape.onnx: its graph failed"):
        list(predict_each(bad, [tmp_path / "missing.png", _image(tiny_cookies)]))


def test_a_graph_asking_for_petabytes_is_an_export_error(tiny_cookies, tmp_path):
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [100000, 100000, 100000])
    zero = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    nodes = [_score(), helper.make_node("ConstantOfShape", ["shape"], ["maps"], value=zero)]
    huge = _file(tmp_path / "huge.onnx", nodes, [shape])
    with pytest.raises(ExportError, match=r"huge.onnx: its graph failed \(ConstantOfShape"):
        predict_onnx(huge, [_image(tiny_cookies)])


def test_predict_onnx_says_error_not_a_traceback(tiny_cookies, tmp_path, capsys):
    bad = _reshape_fails(tmp_path / "reshape.onnx")
    code = main(["predict", "--onnx", str(bad), "--no-overlays", str(_image(tiny_cookies))])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: " in err and "reshape.onnx: its graph failed" in err


# --- 2. a graph with an op export never writes: refused at load -------------------------------
def _loop(path):
    """A Loop of 2**62 iterations (predict ran for ever)."""
    info = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["co"]), helper.make_node("Identity", ["v"], ["vo"])],
        "body",
        [
            info("i", TensorProto.INT64, []),
            info("c", TensorProto.BOOL, []),
            info("v", TensorProto.FLOAT, None),
        ],
        [info("co", TensorProto.BOOL, []), info("vo", TensorProto.FLOAT, None)],
    )
    count = helper.make_tensor("M", TensorProto.INT64, [], [2**62])
    go = helper.make_tensor("C", TensorProto.BOOL, [], [True])
    nodes = [_score("s"), helper.make_node("Loop", ["M", "C", "s"], ["scores"], body=body), _map()]
    return _file(path, nodes, [count, go])


def test_a_loop_is_refused_at_load_naming_the_file(tmp_path):
    loop = _loop(tmp_path / "loop.onnx")
    with pytest.raises(ExportError, match=rf"loop.onnx: its graph holds 'Loop', a subgraph.*{FIX}"):
        OnnxDetector(loop)


def test_foreign_ops_subgraphs_and_functions_are_refused(tmp_path):
    evil = helper.make_node("EvilOp", ["images"], ["scores", "maps"], domain="evil.domain")
    custom = _file(tmp_path / "custom.onnx", [evil], domains=["evil.domain"])
    with pytest.raises(ExportError, match=r"custom.onnx: its graph holds 'evil.domain.EvilOp'"):
        OnnxDetector(custom)
    # an allowed op type carrying a graph attribute: refused all the same
    inner = helper.make_graph([], "inner", [], [])
    odd = helper.make_node("Identity", ["s"], ["scores"], body=inner)
    nested = _file(tmp_path / "nested.onnx", [_score("s"), odd, _map()])
    with pytest.raises(ExportError, match=r"nested.onnx: its graph holds a subgraph"):
        OnnxDetector(nested)
    twice = helper.make_function(
        "mine",
        "Twice",
        ["x"],
        ["y"],
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_opsetid("", 13)],
    )
    mine = [_score("s"), helper.make_node("Twice", ["s"], ["scores"], domain="mine"), _map()]
    functions = _file(tmp_path / "fn.onnx", mine, domains=["mine"], functions=[twice])
    with pytest.raises(
        ExportError, match=r"fn.onnx: its graph holds 'mine.Twice', model functions"
    ):
        OnnxDetector(functions)


def test_tensors_in_other_files_are_refused(tmp_path):
    """onnxruntime reads an initializer's or a Constant's external data from the file it names
    (beside the model: any file there); export never writes one (session 29)."""
    from onnx.external_data_helper import set_external_data

    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], b"\0" * 16, raw=True)
    set_external_data(weight, "secret.bin")
    weight.ClearField("raw_data")
    nodes = [_score("s"), helper.make_node("Add", ["s", "w"], ["scores"]), _map()]
    outside = _file(tmp_path / "outside.onnx", nodes, [weight])
    with pytest.raises(ExportError, match=r"outside.onnx: its graph holds tensors stored outside"):
        OnnxDetector(outside)
    value = helper.make_tensor("c", TensorProto.FLOAT, [4], b"\0" * 16, raw=True)
    set_external_data(value, "secret.bin")
    value.ClearField("raw_data")
    constant = helper.make_node("Constant", [], ["w"], value=value)
    in_node = _file(tmp_path / "node.onnx", [constant, *nodes])
    assert graph_ops(in_node.read_bytes())[1] == ["tensors stored outside the file (external data)"]
    with pytest.raises(ExportError, match=r"node.onnx: its graph holds tensors stored outside"):
        OnnxDetector(in_node)


def test_allowed_ops_still_load_and_score(tiny_cookies, tmp_path):
    """The check refuses what export never writes, not small graphs of its ops."""
    plain = _file(tmp_path / "plain.onnx", [_score(), _map()])
    scores, maps = predict_onnx(plain, [_image(tiny_cookies)])
    assert scores.shape == (1,) and maps.shape == (1, SIZE, SIZE)


def test_onnx_predict_copied_with_onnx_checks_refuses_a_loop(tmp_path):
    """Copied without the package, onnx_predict.py uses onnx_checks.py beside it; alone, it
    refuses to load (it loaded every file unchecked with a note, before session 31)."""
    import anomaly.onnx_checks
    import anomaly.onnx_predict

    loop = _loop(tmp_path / "loop.onnx")
    shutil.copy(anomaly.onnx_predict.__file__, tmp_path / "deployed.py")
    code = (
        "import sys; sys.modules['anomaly'] = None; from deployed import OnnxDetector\n"
        f"try: OnnxDetector({str(loop)!r})\n"
        "except ValueError as err: print('refused:', err)"
    )

    def run():
        return fresh_python(code, tmp_path)

    alone = run()
    assert alone.returncode != 0 and "refused:" not in alone.stdout
    assert (
        "ImportError: onnx_predict.py needs onnx_checks.py of its own version beside it"
        in alone.stderr
    )
    shutil.copy(anomaly.onnx_checks.__file__, tmp_path / "onnx_checks.py")
    beside = run()
    assert "refused:" in beside.stdout and "'Loop', a subgraph" in beside.stdout, beside.stderr


# --- 3. the allow-list is what the exporter writes today ---------------------------------------
KINDS = {  # each kind of run export writes (tests/test_export.py checks their scores)
    "default": {},  # mobilenet_v2, --search-refine 0.1
    "efficientnet_grey": {
        "backbone": "efficientnet_lite0",
        "layers": "blocks.2, blocks.4",
        "channels": 1,
        "feature_pad": 8,
        "score_border": 4,
        "score_topk": 0.05,
        "smooth_sigma": 1.0,
        "neighbors": 2,
        "search_refine": 1.0,
    },
    "int8": {"search_precision": "int8", "runtime": "onnxruntime", "search_refine": 0.3},
    "whiten_clusters": {
        "whiten": 0.1,
        "search_clusters": 3,
        "search_probes": 1,
        "coreset_ratio": 0.5,
    },
    "refine0": {"search_refine": 0.0},
}


def _onnx_ops(path) -> set:
    """(domain, op type) of every node, subgraphs' too, as the onnx package lists them."""
    ops, graphs = set(), [onnx.load(str(path)).graph]
    while graphs:
        for node in graphs.pop().node:
            ops.add((node.domain, node.op_type))
            for a in node.attribute:
                graphs += ([a.g] if a.HasField("g") else []) + list(a.graphs)
    return ops


def _check_export(run, path):
    from anomaly.export import export_onnx

    export_onnx(run, path)
    ops = _onnx_ops(path)
    assert ops <= EXPORTED_OPS, (
        f"export writes ops not in onnx_checks.EXPORTED_OPS: {ops - EXPORTED_OPS}"
    )
    assert graph_ops(path.read_bytes()) == (ops, [])  # the reader lists what onnx lists
    OnnxDetector(path)  # and it loads


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_op_of_a_fresh_export_is_allowed(kind, tiny_cookies, tmp_path):
    config = Config.for_method(
        "patchknn", data=str(tiny_cookies), device="cpu", **{"size": 48, **KINDS[kind]}
    )
    train_run(config, tmp_path / kind, progress=False)
    _check_export(tmp_path / kind, tmp_path / f"{kind}.onnx")


def test_every_op_of_an_encoder_backbones_export_is_allowed(scored_ae_run, tiny_cookies, tmp_path):
    backbone = f"encoder:{scored_ae_run}"
    config = Config.for_method(
        "patchknn", data=str(tiny_cookies), device="cpu", size=64, channels=1, backbone=backbone
    )
    train_run(config, tmp_path / "enc", progress=False)
    _check_export(tmp_path / "enc", tmp_path / "enc.onnx")


def test_every_op_of_a_resnet_export_is_allowed(tiny_cookies, tmp_path):
    """resnet18 with random weights in a hub folder of the test's own (the ops are the same)."""
    import torch
    import torchvision

    from anomaly.backbones import TORCHVISION_WEIGHTS

    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
        weights = tmp_path / "hub" / "checkpoints" / TORCHVISION_WEIGHTS["resnet18"]
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        config = Config.for_method(
            "patchknn", data=str(tiny_cookies), device="cpu", size=48, backbone="resnet18"
        )
        train_run(config, tmp_path / "r18", progress=False)
        _check_export(tmp_path / "r18", tmp_path / "r18.onnx")
    finally:
        torch.hub.set_dir(hub)


def test_every_op_of_an_auto_runs_export_is_allowed(tiny_cookies, tmp_path, monkeypatch):
    from anomaly.detectors import auto

    knn = {"method": "patchknn", "size": 48, "coreset_ratio": 0.1}
    monkeypatch.setattr(auto, "CANDIDATES", [knn])
    config = Config.for_method("auto", data=str(tiny_cookies), size=48, device="cpu")
    train_run(config, tmp_path / "auto", progress=False)
    _check_export(tmp_path / "auto", tmp_path / "auto.onnx")


def test_onnx_predict_copied_into_a_package_finds_onnx_checks_beside_it(tmp_path):
    """Copied with onnx_checks.py into a package of the user's, onnx_predict.py looked for
    `onnx_checks` on sys.path only, and said the graph loads unchecked (session 30)."""
    import anomaly.onnx_checks
    import anomaly.onnx_predict

    loop = _loop(tmp_path / "loop.onnx")
    (tmp_path / "mylib").mkdir()
    (tmp_path / "mylib" / "__init__.py").write_text("")
    shutil.copy(anomaly.onnx_predict.__file__, tmp_path / "mylib" / "onnx_predict.py")
    shutil.copy(anomaly.onnx_checks.__file__, tmp_path / "mylib" / "onnx_checks.py")
    code = (
        "import sys; sys.modules['anomaly'] = None; from mylib.onnx_predict import OnnxDetector\n"
        f"try: OnnxDetector({str(loop)!r})\n"
        "except ValueError as err: print('refused:', err)"
    )
    done = fresh_python(code, tmp_path)
    assert "refused:" in done.stdout and "unchecked" not in done.stderr, done.stderr
