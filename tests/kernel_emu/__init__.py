"""CPU execution of the ECA CUDA kernel source for the tests (issue 15).

g++ compiles ``plugins/eca/ecaKernel.cu``, ``ecaKernels.cuh`` and ``ecaCApi.cu`` as they are (the one
change: kernel launches ``k<<<...>>>(...)`` become ``emu::launch(k, ...)(...)``, see build.py) against
the CUDA headers in ``include/``, and the runtime in ``src/`` runs every thread of every block of every
launch on the CPU, checking each memory access, barrier and warp shuffle:

- ``build.py``: the driver, the kernel library and the TensorRT plugin bridge, in three variants: ``checked``
  (the emulator's own checks: bounds and guard zones, never-written reads, shared-memory races between
  barriers, barrier divergence, shuffle participation, shared-memory limits, plus UBSan's alignment check
  on every Pack access), ``asan`` (AddressSanitizer + UBSan) and ``tsan`` (ThreadSanitizer, one OS thread
  per CUDA thread); cached by source hash.
- ``cases.py``: what to run (shapes, dtypes, layouts, entry points, misaligned pointers, devices) and the
  grids: ``sampled_grid()`` for CI, ``full_grid()`` for ``python -m pytest tests/test_kernel_emu.py
  --emu-full -s``.
- ``runner.py``: runs cases in batches on the driver and checks each against ``eca_deploy.reference``.
- ``mutations.py``: broken copies of the kernel source the harness must catch.

Fibers switch x86-64 stacks, so the emulator needs an x86-64 Linux host with g++ and binutils.
"""
