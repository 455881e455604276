"""Everything that talks to TensorRT: the ONNX -> engine stage and the plugin's TensorRT routes.

- ``backend``: import ``tensorrt`` or ``tensorrt_rtx`` and know what each version can do;
- ``plugin_library``: find, load and verify ``libeca_plugin.so`` (and TensorRT-RTX's loader trap);
- ``engine``: parse, configure and build engines (plugin, embedded plugin, AOT or native layers);
- ``qdp``: the fused node as a Quickly Deployable Plugin whose PTX the engine carries (AOT);
- ``nvrtc``: that PTX and its launch shape, from the kernel source the plugin is built from.

Nothing here imports TensorRT at import time: each function imports the flavour it is given.
"""
