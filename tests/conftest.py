"""Shared test helpers: seeded float64 data, tiny MLP/CNN builders and the hypothesis profiles.

The global default dtype is left alone: models are built with ``.double()`` and data is created as float64.
Builders are exposed as session-scoped fixtures (``make_mlp``, ``make_cnn``, ``randn``) so hypothesis tests can
use them too; ``mlp``/``mlp_nobias``/``cnn``/``cnn_nobias`` are ready-made instances. Torch runs on one thread:
the tensors are tiny, and intra-op threads only contend on a shared two-core machine.

Real data: a test marked ``@pytest.mark.data("mnist", "sst/trees", ...)`` needs those folders under
``$RELPROP_DATA`` (for MNIST and Fashion-MNIST: every IDX file of the dataset). When the variable is unset or a
folder or file is missing the test is skipped, and the reason says what is missing and how to supply it; the
``data_dir`` fixture gives the folder. Every other test runs anywhere, with no data and no network.

Fast loop: ``pytest -m "not slow"`` leaves out the tests that train models, drive a browser, run benchmark
scripts or explain full-size torchvision models (a test can say ``@pytest.mark.slow`` itself; the long ones that
existed before the marker are listed in ``_SLOW`` below, by file or test, as measured with ``--durations``).
CI runs everything.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import nn

torch.set_num_threads(1)  # tiny float64 tensors: threads only add contention on the shared 2-core machine


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_as_in_a_terminal() -> object:
    """Python's own SIGINT handler for the session, as in a terminal: a shell starts a background job (``pytest &``
    in a script) with SIGINT ignored, and the Ctrl-C tests send SIGINT and check that the handler is restored."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=25)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def missing_data(*names: str) -> str | None:
    """Why the data folders ``names`` (relative to $RELPROP_DATA) are not usable, or None when they are."""
    root = os.environ.get("RELPROP_DATA")
    wanted = ", ".join(f"{name}/" for name in names)
    if not root:
        return f"needs real data: RELPROP_DATA is unset; set it to the folder holding {wanted}"
    from relprop.data.download import KNOWN_FILES

    for name in names:
        files = [Path(root) / name / f for f in KNOWN_FILES.get(name, {})] or [Path(root) / name]
        absent = [str(path) for path in files if not path.exists()]
        if absent:
            return (f"needs real data: {absent[0]} does not exist (RELPROP_DATA={root}); set RELPROP_DATA to "
                    f"the folder holding {wanted}")
    return None


_SLOW = (  # node-id prefixes of tests that take seconds each (pytest --durations=50 on 2 shared CPU cores)
    "tests/coverage/",  # every torchvision model family, full size
    "tests/cli/",  # trains sentiment models
    "tests/unit/test_zoo_speed_smoke.py", "tests/unit/test_benchmark_smoke.py",  # run the benchmark scripts
    "tests/unit/test_own_forward_speed_smoke.py", "tests/unit/test_timm_families_smoke.py",
    "tests/unit/test_methods_speed_smoke.py",
    "tests/unit/test_report.py", "tests/unit/test_report_browser.py",  # train runs and grids, headless Chromium
    "tests/unit/test_prototypes_cli.py", "tests/unit/test_training.py", "tests/unit/test_sst.py",
    "tests/unit/test_docs.py::test_code_blocks_run",  # each page in a fresh interpreter
    "tests/unit/test_packaging.py::test_metrics_and_viz_after_import_relprop",  # a fresh interpreter
    "tests/unit/test_text_transformer.py::test_quick_run_of_main",
    "tests/reference/test_against_zennit.py::test_torchvision_resnet_matches_zennit",
    "tests/reference/test_against_lxt.py",  # tiny LLaMA, BERT and GPT-2 in float64
    "tests/unit/test_transformer_models.py::test_timm_vision_transformer_explains",
    "tests/unit/test_recurrent.py::test_every_method_on_every_thesis_architecture_leaves_no_hook",
    "tests/unit/test_data.py::test_full_mnist_maj_train", "tests/unit/test_data.py::test_split_indices_match",
    "tests/unit/test_data.py::test_image_splits", "tests/unit/test_data.py::test_shared_files_match_known",
    "tests/unit/test_data.py::test_mnist_maj_blocks_hold_the_right_images",  # read all of MNIST
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(_SLOW):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "data(*folders): needs these folders under $RELPROP_DATA; skipped, saying why, when absent"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("data"):
        reason = missing_data(*marker.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture
def data_dir(request: pytest.FixtureRequest) -> Path:
    """$RELPROP_DATA of a test marked ``data(...)`` (the marker has already skipped when it is unusable)."""
    marker = request.node.get_closest_marker("data")
    reason = missing_data(*(marker.args if marker else ()))
    if reason:
        pytest.skip(reason)
    return Path(os.environ["RELPROP_DATA"])


def seeded(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(seed)


def randn64(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Standard normal float64 tensor from a seeded generator, times ``scale``."""
    return scale * torch.randn(*shape, generator=seeded(seed), dtype=torch.float64)


def _init_(model: nn.Module, seed: int, bias_scale: float) -> nn.Module:
    """Re-draw every weight as N(0, 1/fan_in) and every bias as N(0, bias_scale^2), seeded."""
    generator = seeded(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(bias_scale * torch.randn(param.shape, generator=generator, dtype=torch.float64))
            else:
                fan_in = param[0].numel() if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) / fan_in**0.5)
    return model


def build_mlp(
    sizes: Sequence[int] = (6, 8, 5, 3), *, bias: bool = True, seed: int = 0,
    activation: Callable[[], nn.Module] = nn.ReLU, bias_scale: float = 0.3,
) -> nn.Sequential:
    """Linear/activation stack in float64, eval mode: sizes (in, hidden..., classes)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    return _init_(nn.Sequential(*layers).double().eval(), seed, bias_scale)  # type: ignore[return-value]


def build_cnn(
    *, channels: int = 2, size: int = 8, classes: int = 3, bias: bool = True, pool: str = "avg", dims: int = 2,
    seed: int = 0, bias_scale: float = 0.3,
) -> nn.Sequential:
    """Conv -> ReLU -> pool(2) -> Conv -> ReLU -> Flatten -> Linear, for inputs (batch, channels, size[, size])."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pools = {("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d, ("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d}
    spatial = (size // 2 - 2) ** dims
    model = nn.Sequential(
        conv(channels, 4, 3, padding=1, bias=bias), nn.ReLU(), pools[(pool, dims)](2),
        conv(4, 5, 3, bias=bias), nn.ReLU(), nn.Flatten(), nn.Linear(5 * spatial, classes, bias=bias),
    )
    return _init_(model.double().eval(), seed, bias_scale)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def make_mlp() -> Callable[..., nn.Sequential]:
    return build_mlp


@pytest.fixture(scope="session")
def make_cnn() -> Callable[..., nn.Sequential]:
    return build_cnn


@pytest.fixture(scope="session")
def randn() -> Callable[..., torch.Tensor]:
    return randn64


@pytest.fixture
def mlp() -> nn.Sequential:
    return build_mlp(bias=True)


@pytest.fixture
def mlp_nobias() -> nn.Sequential:
    return build_mlp(bias=False)


@pytest.fixture
def cnn() -> nn.Sequential:
    return build_cnn(bias=True)


@pytest.fixture
def cnn_nobias() -> nn.Sequential:
    return build_cnn(bias=False)
