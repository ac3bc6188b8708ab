"""Remote-adapter benchmark: one explanation over OIP REST, OIP gRPC and the local ONNX adapter.

    pip install ".[cpu,grpc,serve,bench]"
    python -m blackbox_lime.evaluation.bench_remote [--reps 3] [--out bench_out/remote.json]

Part 1 (transport cost). MLServer on 127.0.0.1 serves the bundled demo CNN (examples/endpoint runtime).
One explanation with default settings (500 samples, MAE fill) of a chest phantom runs through the local
onnxruntime adapter, through REST and through gRPC, side by side, alternating the order per repetition.
It reports median wall time, the ratio to local, requests and queries, and whether the saliency equals
the local one (max |difference|).

Part 2 (concurrency). The server adds 50 ms per request (an ``asyncio.sleep``: latency that does not
hold the server's event loop, as a network and queue would). The same explanation runs over gRPC
with 1, 2 and 4 requests in flight (max_batch 16, so ~32 requests). Two served models:

- the demo CNN: real compute, which on this 2-core machine shares the cores with the client;
- a "latency-only" classifier: linear in the patch means of a 32x32 input (patch 8), so its compute
  and its tensors (16 x 3 x 32 x 32 floats, 196 kB) are negligible, which isolates what concurrency
  can hide: the per-request latency.

It reports the classifier stage (time inside ``predict``) and the whole explanation, with the speed-up
against concurrency 1 and the fraction of the ideal speed-up (= concurrency) reached by the stage.

It also times the client's side of one 32-image request (JSON vs protobuf serialisation), so the
transport cost can be split between client and server.

``--part overlap`` (the remote goals of the pipelining work): the default explanation locally and through the
loopback OIP server of the tests (``evaluation/oip_server.py``; numpy decoding, so the server costs its model
and nothing more), over gRPC and over REST with binary tensors, each with the MAE fills overlapped with the
requests in flight (the remote default) and one stage after the other, at 0 and 100 ms of server delay per
request and 4 requests in flight. Two served models: the demo CNN, and a latency-only classifier of the same
224 x 224 input. Writes ``results.json`` and ``table.md`` beside ``--out``::

    python -m blackbox_lime.evaluation.bench_remote --part overlap --reps 3 --out docs/bench_remote/overlap/results.json

``--part file`` (vendor file APIs): the default explanation locally and through a file endpoint, one PNG per
request with every label listed: the loopback file-API server (``evaluation/file_server.py``, in its own process)
at 0 and 100 ms of delay per request, and TorchServe 0.12 (``evaluation/torchserve_server.py``, one worker) where
it is installed; the loopback rows at PNG zlib levels 1 (the default) and 0 (``png_compression``, stored). It
also times the PNG encoding of one 224 x 224 image, and gives the floor that latency sets (requests x delay /
requests in flight)::

    python -m blackbox_lime.evaluation.bench_remote --part file --reps 3 --out docs/bench_remote/file/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blackbox_lime.adapters import is_url, load_adapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.evaluation import demo_server
from blackbox_lime.models import bundled_model
from blackbox_lime.evaluation.phantoms import make_phantom


def explain_once(model: str, image: np.ndarray, max_batch: int | None = None, concurrency: int | None = None,
                 config: ExplainConfig | None = None, overlap: bool | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if is_url(model):
        kw["concurrency"] = concurrency
    with load_adapter(model, max_batch=max_batch, **kw) as adapter:
        explainer = Explainer(adapter, config or ExplainConfig(), overlap=overlap)
        t0 = time.perf_counter()
        exp = explainer.explain(image, rng=0)
        wall = time.perf_counter() - t0
    return {"wall": wall, "classifier": exp.timings["classifier"], "fill": exp.timings["fill"],
            "queries": exp.queries, "requests": exp.requests, "saliency": exp.saliency}


def linear_model(path: Path, size: int = 32, patch: int = 8) -> Path:
    """A classifier linear in the patch means of a small image: negligible compute and tiny tensors."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    g = size // patch
    a = rng.normal(0, 0.5, (g * g, 1)).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])
    nodes = [
        helper.make_node("ReduceMean", ["image", "ax1"], ["gray"], keepdims=0),  # (N, size, size)
        helper.make_node("Reshape", ["gray", "s1"], ["r1"]),  # (N, g, patch, g, patch)
        helper.make_node("ReduceMean", ["r1", "ax24"], ["pm"], keepdims=0),  # (N, g, g)
        helper.make_node("Reshape", ["pm", "s2"], ["flat"]),  # (N, g*g)
        helper.make_node("MatMul", ["flat", "a"], ["lin"]),  # (N, 1)
        helper.make_node("Add", ["lin", "b"], ["lb"]),
        helper.make_node("Sigmoid", ["lb"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probs"], axis=1),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("ax1", np.array([1], np.int64)), ("ax24", np.array([2, 4], np.int64)),
        ("s1", np.array([-1, g, patch, g, patch], np.int64)), ("s2", np.array([-1, g * g], np.int64)),
        ("a", a), ("b", np.array([0.1], np.float32)), ("one", np.array([1.0], np.float32)))]
    graph = helper.make_graph(nodes, "latency_only", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def part1(image: np.ndarray, reps: int) -> dict[str, Any]:
    local = str(bundled_model("demo_cnn.onnx"))
    with demo_server.start() as server:
        targets = {"local onnx": local, "OIP REST (JSON)": server.rest_url, "OIP gRPC": server.grpc_url}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        names = list(targets)
        for rep in range(reps):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                runs[name].append(explain_once(targets[name], image))
                print(f"  part 1 rep {rep + 1}/{reps} {name}: {runs[name][-1]['wall']:.2f}s", flush=True)
    ser = serialization_cost()
    ref = runs["local onnx"][0]["saliency"]
    base = median(runs["local onnx"], "wall")
    table = []
    for name in names:
        rs = runs[name]
        table.append({"adapter": name, "wall_s": median(rs, "wall"), "ratio_to_local": median(rs, "wall") / base,
                      "classifier_s": median(rs, "classifier"), "requests": rs[0]["requests"],
                      "queries": rs[0]["queries"],
                      "max_abs_saliency_diff": float(max(np.abs(r["saliency"] - ref).max() for r in rs)),
                      "walls": [round(r["wall"], 3) for r in rs]})
    return {"rows": table, "client_serialization_s_per_32": ser}


def serialization_cost(n: int = 32, reps: int = 5) -> dict[str, float]:
    """Client-side cost of turning one request of n 224x224 images into bytes (JSON vs protobuf raw)."""
    import orjson
    from tritonclient.grpc import service_pb2 as pb

    x = np.random.default_rng(0).random((n, 3, 224, 224), dtype=np.float32)
    out: dict[str, list[float]] = {"json": [], "grpc": []}
    for _ in range(reps):
        t = time.perf_counter()
        orjson.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1)}]},
                     option=orjson.OPT_SERIALIZE_NUMPY)
        out["json"].append(time.perf_counter() - t)
        t = time.perf_counter()
        req = pb.ModelInferRequest(model_name="m")
        req.raw_input_contents.append(x.tobytes())
        req.SerializeToString()
        out["grpc"].append(time.perf_counter() - t)
    return {k: float(statistics.median(v)) for k, v in out.items()}


_SERVER_DECODE = """
import json, statistics, sys, time
import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter

n, reps = int(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).random((n, 3, 224, 224), dtype=np.float32)
req = pb.ModelInferRequest(model_name="m")
req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=list(x.shape)))
req.raw_input_contents.append(x.tobytes())
conv, dec = [], []
for _ in range(reps):
    t = time.perf_counter(); types = ModelInferRequestConverter.to_types(req); conv.append(time.perf_counter() - t)
    t = time.perf_counter(); NumpyCodec.decode_input(types.inputs[0]); dec.append(time.perf_counter() - t)
print(json.dumps({"to_types": statistics.median(conv), "decode_input": statistics.median(dec),
                  "data_type": type(getattr(types.inputs[0].data, "root", types.inputs[0].data)).__name__}))
"""


def server_decode_cost(n: int = 32, reps: int = 5) -> dict[str, Any]:
    """MLServer's own cost to turn one gRPC request of n images into the numpy array its runtime gets.

    Runs in a subprocess: mlserver and tritonclient cannot share a process (duplicate proto symbols).
    """
    import sys

    r = subprocess.run([sys.executable, "-c", _SERVER_DECODE, str(n), str(reps)], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def part2(image: np.ndarray, reps: int, delay_ms: float, levels: list[int], max_batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"demo CNN": bundled_model("demo_cnn.onnx"), "latency-only": linear_model(Path(tmp) / "linear.onnx")}
        for label, path in models.items():
            with demo_server.start(path, delay_ms=delay_ms) as server:
                runs: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
                for rep in range(reps):
                    order = levels if rep % 2 == 0 else levels[::-1]
                    for c in order:
                        cfg = ExplainConfig(patch_size=8) if label == "latency-only" else None
                        runs[c].append(explain_once(server.grpc_url, image, max_batch=max_batch, concurrency=c,
                                                    config=cfg))
                        print(f"  part 2 {label} rep {rep + 1}/{reps} c={c}: classifier "
                              f"{runs[c][-1]['classifier']:.2f}s wall {runs[c][-1]['wall']:.2f}s", flush=True)
            c1_stage, c1_wall = median(runs[levels[0]], "classifier"), median(runs[levels[0]], "wall")
            out[label] = [{"concurrency": c, "requests": runs[c][0]["requests"],
                           "classifier_s": median(runs[c], "classifier"), "wall_s": median(runs[c], "wall"),
                           "stage_speedup": c1_stage / median(runs[c], "classifier"),
                           "wall_speedup": c1_wall / median(runs[c], "wall"),
                           "fraction_of_ideal": c1_stage / median(runs[c], "classifier") / c} for c in levels]
    return out


def part_overlap(image: np.ndarray, reps: int, delays_ms: list[float], concurrency: int) -> list[dict[str, Any]]:
    """The default explanation (MAE fill, 500 samples) locally and over gRPC and REST with ``delay_ms`` of
    latency per request and ``concurrency`` requests in flight, with the fills overlapped with the requests
    in flight (the remote default) and without (``Explainer(overlap=False)``): wall time against the same
    model run locally (the local default: no overlap), and map equality. Two served models: the demo CNN,
    whose server shares this machine's cores with the client, and a latency-only classifier of the same
    224x224 input (linear in the 16 px patch means), whose inference costs nothing to speak of. The server
    is the loopback OIP server of the tests (``evaluation/oip_server.py``: numpy decoding, one inference
    thread), not MLServer, whose tensor conversion alone takes about 0.4 s per 32-image request."""
    from blackbox_lime.evaluation import oip_server

    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"demo CNN": bundled_model("demo_cnn.onnx"),
                  "latency-only": linear_model(Path(tmp) / "linear224.onnx", size=224, patch=16)}
        for label, path in models.items():
            for delay_ms in delays_ms:
                with oip_server.start(path, grpc=True, delay_ms=delay_ms) as server:
                    setups = [("local onnx", str(path), None), ("local onnx, overlapped", str(path), True)] + [
                        (f"{where}, {'overlapped' if ov else 'one stage after the other'}", url, ov)
                        for where, url in (("OIP gRPC", server.grpc_url), ("OIP REST (binary)", server.rest_url))
                        for ov in (True, False)]
                    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in setups}
                    for rep in range(reps):
                        for name, url, ov in (setups if rep % 2 == 0 else setups[::-1]):
                            runs[name].append(explain_once(url, image, concurrency=concurrency, overlap=ov))
                            print(f"  overlap {label} {delay_ms:g} ms rep {rep + 1}/{reps} {name}: "
                                  f"{runs[name][-1]['wall']:.2f}s", flush=True)
                base = median(runs["local onnx"], "wall")
                ref = runs["local onnx"][0]["saliency"]
                out += [{"model": label, "delay_ms": delay_ms, "setup": name, "wall_s": median(rs, "wall"),
                     "ratio_to_local": median(rs, "wall") / base, "fill_s": median(rs, "fill"),
                     "classifier_s": median(rs, "classifier"), "requests": rs[0]["requests"],
                     "identical_to_local": all(np.array_equal(r["saliency"], ref) for r in rs),
                     "walls": [round(r["wall"], 3) for r in rs]} for name, rs in runs.items()]
    return out


def png_cost(reps: int = 200) -> dict[str, float]:
    """Seconds to PNG-encode one 224 x 224 RGB chest phantom, median of ``reps``: this package's writer at zlib
    levels 1 (the default) and 0 (stored), and OpenCV's at level 1 (the writer used before), with the bytes each
    makes."""
    from blackbox_lime.adapters.file_api import encode_image

    px = np.round(make_phantom("chest_xray", "test", 1).image * 255).astype(np.uint8)
    encoders = {"level 1": lambda: encode_image(px, "png", png_compression=1),
                "level 0": lambda: encode_image(px, "png", png_compression=0),
                "OpenCV level 1": lambda: cv2.imencode(".png", cv2.cvtColor(px, cv2.COLOR_RGB2BGR),
                                                       [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()}
    out: dict[str, float] = {}
    for name, fn in encoders.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            data = fn()
            times.append(time.perf_counter() - t0)
        out[f"{name} s"], out[f"{name} bytes"] = statistics.median(times), float(len(data))
    return out


def _file_profile(folder: Path, name: str, url: str, class_names: list[str], concurrency: int,
                  auth: str = "", png: int | None = None) -> str:
    path = folder / f"{name}.toml"
    request = "" if png is None else f"[request]\npng_compression = {png}\n"
    path.write_text(f'url = "{url}"\nprotocol = "file"\npreset = "torchserve"\n{auth}\n{request}[limits]\n'
                    f"concurrency = {concurrency}\n[output]\nkind = \"probabilities\"\n"
                    f"class_names = {json.dumps(class_names)}\n")
    return str(path)


def part_file(image: np.ndarray, reps: int, delays_ms: list[float], levels: list[int],
              torchserve: bool, model: Path, label: str, png_levels: tuple[int, ...] = (1,)) -> list[dict[str, Any]]:
    """Local onnx against file endpoints (label-score-map answers listing every label, PNG requests) serving
    ``model``, each setup in every round, the order alternating."""
    import sys

    from blackbox_lime.adapters.onnx import OnnxAdapter

    names = list(OnnxAdapter(model).info.class_names)
    setups: list[tuple[str, float, int, str]] = [("local onnx", 0.0, 0, str(model))]
    servers: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            for delay in delays_ms:
                ready = folder / f"ready-{delay:g}"
                proc = subprocess.Popen([sys.executable, "-m", "blackbox_lime.evaluation.file_server", "--model",
                                         str(model), "--format", "label-score-map", "--delay-ms", str(delay),
                                         "--ready", str(ready)], stdout=subprocess.DEVNULL)
                servers.append(proc)
                t0 = time.monotonic()
                while not ready.is_file() or not ready.read_text():
                    if proc.poll() is not None or time.monotonic() - t0 > 60:
                        raise RuntimeError("the loopback file-API server did not start")
                    time.sleep(0.1)
                for c in levels:
                    for png in png_levels:
                        setups.append((f"file API (loopback server), {c} in flight, PNG level {png}", delay, c,
                                       _file_profile(folder, f"file-{delay:g}-{c}-{png}", ready.read_text(), names, c,
                                                     png=png)))
            if torchserve:
                from blackbox_lime.evaluation import torchserve_server

                ts = torchserve_server.start(model, folder / "torchserve", {"demo": 5})
                servers.append(ts)
                os.environ["BBL_BENCH_TORCHSERVE_KEY"] = ts.key("inference")
                for c in levels:
                    setups.append((f"TorchServe 0.12 (1 worker), {c} in flight", 0.0, c,
                                   _file_profile(folder, f"ts-{c}", ts.url("demo"), names, c,
                                                 '[auth]\ntoken_env = "BBL_BENCH_TORCHSERVE_KEY"')))
            runs: dict[tuple[str, float], list[dict[str, Any]]] = {(n, d): [] for n, d, _, _ in setups}
            for rep in range(reps):
                for name, delay, c, target in (setups if rep % 2 == 0 else setups[::-1]):
                    if target.endswith(".toml"):
                        with load_adapter(endpoint=target) as adapter:
                            t0 = time.perf_counter()
                            exp = Explainer(adapter, ExplainConfig()).explain(image, rng=0)
                            wall = time.perf_counter() - t0
                        row = {"wall": wall, "classifier": exp.timings["classifier"], "queries": exp.queries,
                               "requests": exp.requests}
                    else:
                        row = explain_once(target, image)
                    runs[(name, delay)].append(row)
                    print(f"  file rep {rep + 1}/{reps} {name} {delay:g} ms: {row['wall']:.2f}s", flush=True)
        finally:
            for s in servers:
                if isinstance(s, subprocess.Popen):
                    s.terminate()
                    s.wait()
                else:
                    s.stop()
    base = median(runs[("local onnx", 0.0)], "wall")
    out = []
    for name, delay, c, _ in setups:
        rs = runs[(name, delay)]
        requests = rs[0]["requests"]
        out.append({"model": label, "setup": name, "delay_ms": delay, "in_flight": c, "wall_s": median(rs, "wall"),
                    "ratio_to_local": median(rs, "wall") / base, "classifier_s": median(rs, "classifier"),
                    "requests": requests, "queries": rs[0]["queries"],
                    "latency_floor_s": requests * delay / 1000 / c if c else 0.0,
                    "walls": [round(r["wall"], 3) for r in rs]})
    return out


def file_markdown(rows: list[dict[str, Any]], png: dict[str, float]) -> str:
    cost = "; ".join(f"{k} {png[k + ' s'] * 1000:.2f} ms, {png[k + ' bytes'] / 1024:.0f} KiB"
                     for k in ("level 1", "level 0", "OpenCV level 1"))
    lines = ["Default explanation (MAE fill, 500 samples) of one chest phantom; answers list every label "
             f"(label-score-map, as TorchServe's). PNG encoding of one 224 x 224 image (median of 200): {cost}. "
             "Served models: the demo CNN, whose one-image inferences the server runs on the "
             "client's 2 cores, and a latency-only classifier (linear in the 16 px patch means of the same input).",
             "", "| served model | endpoint | delay per request | wall (median) | ratio to local | classifier stage | "
             "requests | latency floor (requests x delay / in flight) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['setup']} | {r['delay_ms']:g} ms | {r['wall_s']:.2f} s | "
                     f"{r['ratio_to_local']:.2f} | "
                     f"{r['classifier_s']:.2f} s | {r['requests']} | {r['latency_floor_s']:.2f} s |")
    return "\n".join(lines)


def overlap_markdown(rows: list[dict[str, Any]], concurrency: int) -> str:
    lines = [f"Concurrency {concurrency}, default explanation (MAE fill, 500 samples); ratios to the same model run "
             "locally in the same round:", "",
             "| served model | server delay | setup | wall (median) | ratio to local | fill stage | classifier stage | "
             "requests | map identical to local |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['delay_ms']:g} ms | {r['setup']} | {r['wall_s']:.2f} s | {r['ratio_to_local']:.2f} | "
                     f"{r['fill_s']:.2f} s | {r['classifier_s']:.2f} s | {r['requests']} | "
                     f"{'yes' if r['identical_to_local'] else 'NO'} |")
    return "\n".join(lines)


def markdown(p1: dict[str, Any], p2: dict[str, Any], delay_ms: float, max_batch: int) -> str:
    lines = ["| adapter | wall time (median) | ratio to local | classifier stage | requests | queries | max abs saliency diff vs local |",
             "|---|---|---|---|---|---|---|"]
    for r in p1["rows"]:
        lines.append(f"| {r['adapter']} | {r['wall_s']:.2f} s | {r['ratio_to_local']:.2f} | {r['classifier_s']:.2f} s | "
                     f"{r['requests']} | {r['queries']} | {r['max_abs_saliency_diff']:.1e} |")
    ser = p1["client_serialization_s_per_32"]
    lines += ["", f"Client-side serialization of one 32-image request: JSON {ser['json'] * 1000:.0f} ms, "
              f"gRPC raw {ser['grpc'] * 1000:.0f} ms.", "", f"Server delay {delay_ms:g} ms per request, gRPC, max_batch {max_batch}:", "",
              "| served model | concurrency | requests | classifier stage | stage speed-up | of ideal | whole explanation | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    for label, rows in p2.items():
        for r in rows:
            lines.append(f"| {label} | {r['concurrency']} | {r['requests']} | {r['classifier_s']:.2f} s | "
                         f"{r['stage_speedup']:.2f}x | {100 * r['fraction_of_ideal']:.0f} % | {r['wall_s']:.2f} s | "
                         f"{r['wall_speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_remote", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--delay-ms", type=float, default=50.0)
    p.add_argument("--max-batch", type=int, default=16, help="images per request in part 2")
    p.add_argument("--levels", default="1,2,4", help="concurrency levels in part 2")
    p.add_argument("--out", default="bench_out/remote.json")
    p.add_argument("--part", choices=["all", "server-decode", "overlap", "file"], default="all",
                   help="server-decode: only time MLServer's request conversion (seconds, no server started); "
                        "overlap: only the fills overlapped with requests in flight, against one stage after the other")
    p.add_argument("--overlap-delays-ms", default="0,100", help="server delays per request for --part overlap")
    p.add_argument("--overlap-concurrency", type=int, default=4, help="requests in flight for --part overlap")
    p.add_argument("--file-delays-ms", default="0,100", help="server delays per request for --part file")
    p.add_argument("--file-levels", default="8,32", help="requests in flight for --part file")
    p.add_argument("--no-torchserve", action="store_true", help="--part file without its TorchServe rows")
    p.add_argument("--file-png-levels", default="1,0",
                   help="[request] png_compression levels of the loopback rows of --part file (1: the default)")
    a = p.parse_args(argv)
    if a.part == "server-decode":
        cost = server_decode_cost()
        print(f"MLServer 1.7.1, one gRPC request of 32 images (3x224x224 float32): ModelInferRequestConverter.to_types "
              f"{cost['to_types'] * 1000:.0f} ms (tensor becomes a Python {cost['data_type']}), "
              f"NumpyCodec.decode_input {cost['decode_input'] * 1000:.0f} ms (median of 5)")
        return 0
    image = make_phantom("chest_xray", "test", 1).image
    if a.part == "file":
        from blackbox_lime.evaluation.torchserve_server import torchserve_bin

        png_s = png_cost()
        delays, levels = [float(d) for d in a.file_delays_ms.split(",")], [int(c) for c in a.file_levels.split(",")]
        pngs = tuple(int(x) for x in a.file_png_levels.split(","))
        rows = part_file(image, a.reps, delays, levels, not a.no_torchserve and torchserve_bin() is not None,
                         bundled_model("demo_cnn.onnx"), "demo CNN", pngs)
        with tempfile.TemporaryDirectory() as tmp:
            rows += part_file(image, a.reps, delays, levels, False,
                              linear_model(Path(tmp) / "linear224.onnx", size=224, patch=16), "latency-only", pngs)
        table = file_markdown(rows, png_s)
        print(table)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                   "commit": _commit(), "reps": a.reps, "png_encode": png_s, "file": rows,
                                   "table": table}, indent=2))
        (out.parent / "table.md").write_text(table + "\n")
        return 0
    if a.part == "overlap":
        rows = part_overlap(image, a.reps, [float(d) for d in a.overlap_delays_ms.split(",")], a.overlap_concurrency)
        table = overlap_markdown(rows, a.overlap_concurrency)
        print(table)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                   "commit": _commit(), "reps": a.reps, "overlap": rows, "table": table}, indent=2))
        (out.parent / "table.md").write_text(table + "\n")
        return 0
    print("part 1: transports (default explanation)", flush=True)
    p1 = part1(image, a.reps)
    levels = [int(x) for x in a.levels.split(",")]
    print("part 2: concurrency under server latency", flush=True)
    p2 = part2(image, a.reps, a.delay_ms, levels, a.max_batch)
    table = markdown(p1, p2, a.delay_ms, a.max_batch)
    print(table)
    commit = _commit()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": __import__("os").cpu_count(),
                               "commit": commit, "reps": a.reps, "part1": p1, "part2": p2, "table": table}, indent=2))
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
