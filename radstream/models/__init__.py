"""Reference models: small deterministic ONNX graphs that prove the platform end to end.

They are NOT clinical models. They threshold intensity bands that ``radstream synth`` puts
into its synthetic studies, so they give exact answers there and meaningless answers on
real images. Real models replace them through Triton and a pipeline file.
"""
