"""pytest-benchmark suite: the cases of ``sparsecpu bench kernels`` (BERT-base shapes, M = 128, sparsity
0.7/0.8/0.9), one benchmark per shape, sparsity and implementation (sparsecpu and every baseline,
``torch._int_mm`` included).

    pytest bench/ --benchmark-only [--benchmark-group-by=group] [--benchmark-json FILE]

Each benchmark's ``extra_info`` holds the case (N, K, M, sparsity, threads, dtype, format, ops); benchmarks
are grouped per case. Baselines whose package is missing are skipped with the reason. It is not part
of the normal test run (``testpaths = ["tests"]``).
"""

import functools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytest_benchmark")

import sparsecpu  # noqa: E402
from sparsecpu.bench import (  # noqa: E402
    BASELINES,
    BERT_BASE_SHAPES,
    DEFAULT_MS,
    DEFAULT_SPARSITIES,
    IMPLS,
    build_impls,
    default_threads,
    run_for,
)


@pytest.fixture(scope="module", autouse=True)
def _threads_and_inference_mode():
    """Runs every benchmark with the default thread count in torch and sparsecpu, without autograd."""
    saved = torch.get_num_threads(), sparsecpu.get_num_threads()
    torch.set_num_threads(default_threads())
    sparsecpu.set_num_threads(default_threads())
    with torch.inference_mode():
        yield
    torch.set_num_threads(saved[0])
    sparsecpu.set_num_threads(saved[1])


@functools.lru_cache(maxsize=1)  # cases run one after another (impl varies fastest)
def _case(n, k, m, sparsity):
    """The implementations of one case, set up (and checked) once for all its benchmarks."""
    return {im.name: im for im in build_impls(n, k, m, sparsity, baselines=BASELINES, threads=default_threads())}


@pytest.mark.parametrize("impl", [i.name for i in IMPLS])
@pytest.mark.parametrize("sparsity", DEFAULT_SPARSITIES)
@pytest.mark.parametrize("m", DEFAULT_MS)
@pytest.mark.parametrize("shape", BERT_BASE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_linear(benchmark, shape, m, sparsity, impl):
    """Time of one ``linear`` call of ``impl`` (see ``sparsecpu.bench.kernels`` for what each times)."""
    n, k = shape
    im = _case(n, k, m, sparsity)[impl]
    if im.fn is None:
        pytest.skip(f"{im.label} unavailable: {im.error}")
    benchmark.group = f"{n}x{k} M={m} sparsity={sparsity:g}"
    benchmark.extra_info.update(
        N=n, K=k, M=m, sparsity=sparsity, threads=default_threads(), dtype=im.dtype, format=im.format, ops=im.ops
    )
    run_for(im.fn)  # let the previous benchmark's thread pool go idle before calibration
    benchmark(im.fn)
