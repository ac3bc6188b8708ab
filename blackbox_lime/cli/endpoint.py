"""``blackbox-lime endpoint check``: reach a remote model once and say what it serves."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from blackbox_lime.cli.common import DEMO_IMAGE, EXIT_OK, EXIT_USER, UserError, adapter_from_options, redact_logs


def run_endpoint_check(a: argparse.Namespace) -> int:
    """Health, metadata, a one-image prediction and a full-batch prediction, with latencies."""
    import numpy as np

    from blackbox_lime.adapters import is_url
    from blackbox_lime.explainer import to_canvas
    from blackbox_lime.image_io import load_image
    from blackbox_lime.models import bundled_example

    if a.model is not None and not is_url(a.model) and a.endpoint is None:
        raise UserError("endpoint check needs --endpoint PROFILE.toml or --model URL (not a local file).")
    result: dict[str, Any] = {}
    adapter = adapter_from_options(a)
    redact_logs(adapter)
    with adapter:
        info = adapter.info
        result["endpoint"] = adapter.transport.describe()
        result["ready"] = adapter.ready()
        meta = adapter.meta
        result["metadata"] = None if meta is None else {
            "name": meta.name, "input": {"name": meta.input_name, "shape": list(meta.input_shape),
                                         "datatype": meta.input_datatype},
            "output": {"name": meta.output_name, "shape": list(meta.output_shape or [])}}
        result["model"] = {"input_size": list(info.input_size), "channels": info.channels,
                           "class_names": list(info.class_names), "abnormal_index": info.abnormal_index,
                           **{k: info.extra[k] for k in ("layout", "dtype", "output") if k in info.extra}}
        image = to_canvas(load_image(bundled_example(DEMO_IMAGE)).pixels, info.input_size, info.channels, [])
        t = time.perf_counter()
        probs = adapter.predict(image[None])
        one = time.perf_counter() - t
        omitted = np.isnan(probs[0])
        result["test_prediction"] = {"image": DEMO_IMAGE,
                                     "probs": [None if np.isnan(p) else round(float(p), 6) for p in probs[0]],
                                     "latency_s": round(one, 4), "batch_size": 1}
        size = getattr(adapter.transport, "last_size", None)
        if size is not None:  # a file endpoint: what one request carried, and whether the answer was cut
            result["test_prediction"].update(labels_listed=int((~omitted).sum()), truncated=bool(omitted.any()),
                                             request_bytes=int(size))
        n = adapter.max_batch
        t = time.perf_counter()
        batch_probs = adapter.predict(np.repeat(image[None], n, axis=0))
        full = time.perf_counter() - t
        agree = bool(np.allclose(batch_probs, probs[0], atol=1e-5, equal_nan=True))
        result["batch_prediction"] = {"batch_size": n, "latency_s": round(full, 4),
                                      "per_image_s": round(full / n, 5), "matches_single": agree}
        result["counters"] = adapter.counters()
    if a.json:
        print(json.dumps(result))
    else:
        ready = {True: "ready", False: "NOT ready", None: "unknown (the protocol has no health route)"}[result["ready"]]
        lines = [f"endpoint  {result['endpoint'].get('url')} ({result['endpoint']['protocol']}"
                 + (f", model {result['endpoint']['model']}" if result['endpoint'].get('model') else "") + ")",
                 f"health    {ready}"]
        if meta is not None:
            lines.append(f"metadata  input {meta.input_name} {meta.input_datatype} {list(meta.input_shape)}; "
                         f"output {meta.output_name} {list(meta.output_shape or [])}")
        else:
            lines.append("metadata  none (declared in the profile)")
        tp, bp = result["test_prediction"], result["batch_prediction"]
        lines.append(f"predict   {DEMO_IMAGE}: " + ", ".join(f"{c}={'not listed' if p is None else f'{p:.4f}'}"
                                                             for c, p in zip(info.class_names, tp["probs"]))
                     + f" in {tp['latency_s'] * 1000:.0f} ms (batch 1)")
        if "request_bytes" in tp:
            cut = info.extra.get("censoring") or {}
            lines.append(f"answer    {tp['labels_listed']} of {len(info.class_names)} labels listed"
                         + (f" (truncated; the profile declares top_k {cut.get('top_k')}, threshold "
                            f"{cut.get('threshold')})" if tp["truncated"] else " (complete)")
                         + f"; the request carried {tp['request_bytes'] / 1024:.1f} KiB of "
                         f"{result['endpoint'].get('encoding', 'image').upper()}")
        lines.append(f"batch     {bp['batch_size']} images in {bp['latency_s'] * 1000:.0f} ms "
                     f"({bp['per_image_s'] * 1000:.1f} ms/image); same answer as batch 1: {'yes' if agree else 'NO'}")
        print("\n".join(lines))
    if result["ready"] is False or not agree:
        return EXIT_USER
    return EXIT_OK
