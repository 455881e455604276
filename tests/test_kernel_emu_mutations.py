"""Mutation self-test of the CPU emulator (tests/kernel_emu): every deliberately broken copy of the kernel
source must fail, and fail by the check meant to catch it. A harness that passes a mutant fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from kernel_emu.build import ASAN, CHECKED, TSAN, Variant, build, unavailable
from kernel_emu.cases import ORDERS
from kernel_emu.mutations import MUTATIONS, Mutation, MutationError
from kernel_emu.runner import Outcome, run_cases

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

BY_NAME = {mutation.name: mutation for mutation in MUTATIONS}


def _first_failure(mutation: Mutation, variant: Variant, folder: Path) -> Outcome:
    mutant = build(variant, source_dir=mutation.apply(folder))
    orders = ORDERS[1:] if variant.mode == "threads" else ORDERS
    failed = [o for o in run_cases(mutant, mutation.cases, orders=orders) if not o.passed]
    assert failed, f"the {variant.name} build passed the mutant '{mutation.name}'"
    return failed[0]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_checked_build_catches_the_mutant(mutation: Mutation, tmp_path: Path):
    failure = _first_failure(mutation, CHECKED, tmp_path)
    assert failure.check in mutation.caught_by, f"caught by [{failure.check}], not {sorted(mutation.caught_by)}:\n" \
                                                f"{failure.detail}"


@pytest.mark.parametrize("variant, name, check", [
    (TSAN, "removed __syncthreads before scratch is reused", "data-race"),
    (ASAN, "tail read past the end of a plane", "address-sanitizer"),
], ids=["tsan-removed-barrier", "asan-tail-read"])
def test_sanitizer_build_catches_the_mutant(variant: Variant, name: str, check: str, tmp_path: Path):
    failure = _first_failure(BY_NAME[name], variant, tmp_path)
    assert failure.check == check, failure.detail


def test_a_mutation_whose_text_is_gone_fails_loudly(tmp_path: Path):
    stale = Mutation("stale", "ecaKernels.cuh", "this text is not in the kernel", "", (), frozenset())
    with pytest.raises(MutationError, match="0 times"):
        stale.apply(tmp_path)
