"""Attribution methods as plain functions ``f(model, x, target, **options) -> relevance`` (same shape as x).

Each registers itself for :func:`relprop.explain` with ``@method("name")`` where it is defined.
"""

from __future__ import annotations

from ._registry import METHODS, Attribution, method
from .ablation import feature_ablation, shapley_values
from .cam import grad_cam, guided_grad_cam
from .deeplift import deeplift, deeplift_shap
from .gradient import gradient, gradient_x_input, integrated_gradients, sensitivity, smoothgrad
from .guided import deconvnet, guided_backprop
from .lrp import lrp
from .perturbation import occlusion

__all__ = [
    "gradient", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet", "integrated_gradients",
    "smoothgrad", "occlusion", "lrp", "grad_cam", "guided_grad_cam", "deeplift", "deeplift_shap", "feature_ablation",
    "shapley_values", "METHODS",
    "Attribution", "method",
]
