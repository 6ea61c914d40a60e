"""Mean-field signal propagation at initialisation: what a wide random network should do, per layer,
and (beyond mean field) how much a finite-width ReLU net's activation length spreads.

Pure NumPy (Gaussian integrals by quadrature); it imports neither Hydra nor MLflow and uses the
core only for its activation functions, so theory and network share one phi. The page
docs/theory.md states the equations; the modules:

- :mod:`~nnlab.theory.quadrature`: E_z[f(sqrt(q) z)] and E[f(u_1) g(u_2)] with an error estimate;
- :mod:`~nnlab.theory.meanfield`: one layer's length and correlation maps, q*, c*, chi_1, xi_q,
  xi_c, xi_grad, the phase and the critical line (Poole et al. 2016; Schoenholz et al. 2017);
- :mod:`~nnlab.theory.network`: a whole plain, residual or LayerNorm MLP (:func:`predict`,
  :func:`predict_network`) and its record names (:func:`record`); nnlab's initialisers as
  sigma_w^2, sigma_b^2;
- :mod:`~nnlab.theory.fluctuations`: Var log ||h_L||^2 of plain ReLU nets (Hanin & Rolnick 2018).

Orthogonal weights give the same length map as Gaussian ones (the pre-activations of a wide layer
are Gaussian either way) but a different Jacobian spectrum, which the mean field does not predict.
"""
from nnlab.theory.fluctuations import (act_len_logvar, act_len_logvar_defined, layer_log_variance,
                                       log_length_variance)
from nnlab.theory.meanfield import (CRITICAL_TOL, Q_MAX, Q_MIN, FixedPoint, chi, correlation_fixed_point,
                                    correlation_map, critical_sigma_w2, depth_scale, fixed_point, fixed_point_summary,
                                    length_map, length_map_slope, phase)
from nnlab.theory.network import (NORMS, Prediction, effective_sigma_b2, effective_sigma_w2, predict,
                                  predict_network, record)
from nnlab.theory.quadrature import Z_MAX, gaussian_expectation, pair_expectation

__all__ = [
    "CRITICAL_TOL", "NORMS", "Q_MAX", "Q_MIN", "Z_MAX", "FixedPoint", "Prediction", "act_len_logvar",
    "act_len_logvar_defined", "chi", "correlation_fixed_point", "correlation_map", "critical_sigma_w2",
    "depth_scale", "effective_sigma_b2", "effective_sigma_w2", "fixed_point", "fixed_point_summary",
    "gaussian_expectation", "layer_log_variance", "length_map", "length_map_slope", "log_length_variance",
    "pair_expectation", "phase", "predict", "predict_network", "record",
]
