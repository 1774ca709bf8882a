"""Reference analyses from iNNvestigate (Keras) on small random networks, for relprop's numerical comparison.

Writes ``tests/reference/data/innvestigate_<model>.safetensors`` for model in mlp, cnn, which
``tests/reference/test_against_innvestigate.py`` compares relprop's methods with.

iNNvestigate 2.1 runs on TensorFlow below 2.15 and numpy below 2, so this script runs in a venv of its own, never
in the project's (it needs neither torch nor relprop):

    python3 -m venv /tmp/innvestigate-venv
    /tmp/innvestigate-venv/bin/pip install tensorflow==2.14.1 innvestigate==2.1.2 safetensors
    /tmp/innvestigate-venv/bin/python benchmarks/innvestigate_reference.py     # from the repository root

``--out DIR`` writes elsewhere, ``--models mlp`` restricts the models.

The networks are Keras ``Sequential`` models in float64 with random weights (seed 0): ``mlp`` is Dense(8) ReLU,
Dense(7) ReLU, Dense(3) on 6 features; ``cnn`` is Conv2D(4, 3x3, same) ReLU, MaxPooling2D(2), Conv2D(5, 3x3,
valid) ReLU, Flatten, Dense(6) ReLU, Dense(3) on 8x8 images of 2 channels. Each analyzer explains the output
neuron ``target`` of every sample (``neuron_selection_mode="index"``) of a batch of 4 standard normal inputs.

What each file holds (float64 except the integer targets), in PyTorch's layout (channels first; Conv2d weights
(out, in, h, w); Linear weights (out, in), the first Dense's rows reordered from Keras's (h, w, c) flattening to
PyTorch's (c, h, w)), so that the test loads them into the same network written with ``torch.nn``:

* ``state_dict.<name>``: the weights;
* ``x``, ``target``, ``logits`` (Keras's output on x), ``reference`` (integrated gradients' reference input);
* ``analysis.<analyzer>``: each analyzer's result (the analyzer names are iNNvestigate's; ``.`` becomes ``:``);
* metadata ``reference``: a JSON document with the analyzers' options and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "reference" / "data"
SEED, BATCH = 0, 4
LOW, HIGH = -4.0, 4.0  # deep_taylor.bounded's input box (the inputs lie within it)
STEPS = 16  # integrated gradients

# iNNvestigate's analyzer -> its options
ANALYZERS: dict[str, dict[str, Any]] = {
    "gradient": {},
    "input_t_gradient": {},
    "guided_backprop": {},
    "deconvnet": {},
    "integrated_gradients": {"steps": STEPS},
    "lrp.z": {},
    "lrp.epsilon": {"epsilon": 0.1},
    "lrp.w_square": {},
    "lrp.flat": {},
    "lrp.alpha_2_beta_1": {},
    "lrp.alpha_1_beta_0": {},
    "lrp.alpha_2_beta_1_IB": {},
    "lrp.alpha_1_beta_0_IB": {},
    "lrp.z_plus": {},
    "lrp.z_plus_fast": {},
    "lrp.sequential_preset_a": {"epsilon": 0.1},
    "lrp.sequential_preset_b": {"epsilon": 0.1},
    "lrp.sequential_preset_a_flat": {"epsilon": 0.1},
    "lrp.sequential_preset_b_flat": {"epsilon": 0.1},
    "deep_taylor": {},
    "deep_taylor.bounded": {"low": LOW, "high": HIGH},
}


def build(name: str) -> Any:
    import tensorflow as tf

    layers = tf.keras.layers
    if name == "mlp":
        return tf.keras.Sequential([layers.Input((6,)), layers.Dense(8, activation="relu"),
                                    layers.Dense(7, activation="relu"), layers.Dense(3)])
    return tf.keras.Sequential([
        layers.Input((8, 8, 2)), layers.Conv2D(4, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(5, 3, activation="relu"), layers.Flatten(), layers.Dense(6, activation="relu"), layers.Dense(3),
    ])


# the torch.nn modules that hold the weights of each Keras layer with weights, in order (the test's networks:
# mlp = Linear, ReLU, Linear, ReLU, Linear; cnn = Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, Flatten, Linear, ReLU,
# Linear)
TORCH_NAMES = {"mlp": ["0", "2", "4"], "cnn": ["0", "3", "6", "8"]}


def torch_state(name: str, model: Any) -> dict[str, np.ndarray]:
    """The Keras weights under the names and layouts of the torch.nn network the test builds."""
    import tensorflow as tf

    weighted = [layer for layer in model.layers if layer.get_weights()]
    state: dict[str, np.ndarray] = {}
    for module, layer in zip(TORCH_NAMES[name], weighted, strict=True):
        kernel, bias = layer.get_weights()
        if isinstance(layer, tf.keras.layers.Conv2D):
            weight = kernel.transpose(3, 2, 0, 1)  # (h, w, in, out) -> (out, in, h, w)
        else:
            weight = kernel.T  # (in, out) -> (out, in), in Keras's order of the inputs
            before = model.layers[model.layers.index(layer) - 1]
            if isinstance(before, tf.keras.layers.Flatten):  # Keras flattens (h, w, c), torch (c, h, w)
                h, w, c = before.input_shape[1:]
                weight = weight.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(len(weight), -1)
        state[f"{module}.weight"], state[f"{module}.bias"] = weight, bias
    return {key: np.ascontiguousarray(value, dtype=np.float64) for key, value in state.items()}


def to_keras(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def to_torch(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array


def reference(name: str, out_dir: Path) -> Path:
    import importlib.metadata

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own notes (graph mutation, CPU features)
    import innvestigate
    import tensorflow as tf
    from safetensors.numpy import save_file

    tf.compat.v1.disable_eager_execution()  # iNNvestigate 2 needs graph mode
    tf.keras.backend.set_floatx("float64")
    tf.keras.utils.set_random_seed(SEED)
    model = build(name)
    for layer in model.layers:  # biases are zero at initialisation: draw them too
        weights = layer.get_weights()
        if len(weights) == 2:
            layer.set_weights([weights[0], 0.1 * np.random.default_rng(SEED + len(weights[1])).standard_normal(
                weights[1].shape)])
    rng = np.random.default_rng(SEED)
    shape = (6,) if name == "mlp" else (2, 8, 8)  # torch layout
    x = rng.standard_normal((BATCH, *shape))
    reference_input = 0.3 * rng.standard_normal((1, *shape))
    target = np.array([0, 1, 2, 1], dtype=np.int64)
    logits = model.predict(to_keras(x), verbose=0)
    out: dict[str, np.ndarray] = {f"state_dict.{k}": v for k, v in torch_state(name, model).items()}
    out.update(x=x, target=target, logits=np.asarray(logits, dtype=np.float64), reference=reference_input)
    weights = model.get_weights()
    for analyzer_name, options in ANALYZERS.items():
        # a fresh Keras model for each analyzer: an analyzer applies the model's layers to tensors of its own (the
        # path points of integrated gradients), and a later analyzer would no longer find the first layer's only
        # input to be the model's (deep_taylor.bounded and the _flat presets then silently skip their first rule)
        tf.keras.backend.clear_session()
        model = build(name)
        model.set_weights(weights)
        kwargs = dict(options)
        if analyzer_name == "integrated_gradients":
            kwargs["reference_inputs"] = to_keras(reference_input)
        analyzer = innvestigate.create_analyzer(analyzer_name, model, neuron_selection_mode="index", **kwargs)
        analysis = analyzer.analyze(to_keras(x), neuron_selection=list(target))
        out[f"analysis.{analyzer_name.replace('.', ':')}"] = to_torch(np.asarray(analysis, dtype=np.float64))
        print(f"{name}: {analyzer_name}", file=sys.stderr)
    meta = {"model": name, "seed": SEED, "analyzers": ANALYZERS, "low": LOW, "high": HIGH,
            "versions": {package: importlib.metadata.version(package)
                         for package in ("innvestigate", "tensorflow", "numpy")}}
    path = out_dir / f"innvestigate_{name}.safetensors"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(path),
              metadata={"reference": json.dumps(meta)})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in args.models.split(","):
        print(f"wrote {reference(name, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
