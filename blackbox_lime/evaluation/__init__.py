"""The evaluation harness, apart from the method: phantoms with exact lesion masks, the saliency metrics,
the baselines (lime, occlusion, RISE, KernelSHAP, Grad-CAM), the benchmarks and the tuning on val, and
a demo OIP server. Nothing in the method (blackbox_lime/ above this folder) imports from here; the CLI's
``phantoms``, ``bench`` and ``bank build --phantoms`` do.
"""
