"""Attribution methods as plain functions ``f(model, x, target, **options) -> relevance`` (same shape as x).

Each registers itself for :func:`relprop.explain` with ``@method("name")`` where it is defined.
"""

from __future__ import annotations

from ._registry import METHODS, Attribution, method
from .ablation import feature_ablation, feature_permutation, kernel_shap, lime, shapley_values
from .cam import grad_cam, guided_grad_cam
from .deeplift import deeplift, deeplift_shap
from .gradient import gradient, gradient_shap, gradient_x_input, integrated_gradients, sensitivity, smoothgrad
from .guided import beta_smooth, deconvnet, guided_backprop
from .lrp import lrp
from .pattern import Patterns, learn_patterns, pattern_attribution, pattern_net
from .perturbation import occlusion

__all__ = [
    "gradient", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet", "beta_smooth",
    "integrated_gradients",
    "smoothgrad", "gradient_shap", "occlusion", "feature_ablation", "feature_permutation", "shapley_values",
    "kernel_shap",
    "lime", "lrp", "deeplift", "pattern_net", "pattern_attribution", "learn_patterns", "Patterns",
    "deeplift_shap", "grad_cam", "guided_grad_cam", "METHODS", "Attribution", "method",
]
