"""Measure the worst errors of mtgrad against the float64 reference, per adversarial family.

    .venv/bin/python tests/measure_errors.py [n_per_family]

Not collected by pytest (no test_ prefix). Metrics:
  PCGrad  ||lib - ref|| / ||ref||          (order="fixed", ref = Alg. 1 with ascending orders)
          or / sum||g_i|| where ||ref|| <= 1e-6 sum||g_i|| (result ~ 0)
  MGDA    ||lib - ref|| / ||ref||          where ||ref|| > 1e-6 max||g_i|| ("rel")
          ||lib - ref|| / max||g_i||       otherwise                     ("abs")
  CAGrad  ||lib - d*|| / ||d*||            where the optimum is unique (MGDA ratio > 1e-3)
          |v(lib) - v*| / (max||g_i|| ||g0|| (1+c))   always (optimal value)
          (||lib - g0|| - rho)_+ / rho     feasibility violation
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "src"))

import mtgrad  # noqa: E402
import reference as ref  # noqa: E402
from jacobians import ADVERSARIAL, family_samples, to_torch  # noqa: E402

CS = [0.1, 0.4, 0.5, 0.9, 2.0]


def agg(J, method):
    return mtgrad.aggregate(to_torch(J), method).numpy()


def main(n: int = 40) -> None:
    rows = []
    for kind in ADVERSARIAL:
        worst = dict(pc=0.0, pc_abs=0.0, mg_rel=0.0, mg_abs=0.0, ca_vec=0.0, ca_val=0.0, ca_feas=0.0)
        arg = {}
        for _, J in family_samples((kind,), n_per_family=n, seed=0):
            gmax = np.linalg.norm(J, axis=1).max()
            p_ref = ref.pcgrad(J, ref.fixed_orders(J.shape[0]))
            gsum = np.linalg.norm(J, axis=1).sum()
            err = np.linalg.norm(agg(J, mtgrad.PCGrad(order="fixed")) - p_ref)
            key = "pc" if np.linalg.norm(p_ref) > 1e-6 * gsum else "pc_abs"
            worst[key] = max(worst[key], err / (np.linalg.norm(p_ref) if key == "pc" else gsum))
            x_ref, _ = ref.mgda(J)
            err = np.linalg.norm(agg(J, mtgrad.MGDA()) - x_ref)
            key = "mg_rel" if np.linalg.norm(x_ref) > 1e-6 * gmax else "mg_abs"
            e = err / (np.linalg.norm(x_ref) if key == "mg_rel" else gmax)
            if e > worst[key]:
                worst[key], arg[key] = e, J
            unique = np.linalg.norm(x_ref) > 1e-3 * gmax
            g0 = J.mean(0)
            for c in CS:
                d_ref, v_ref = ref.cagrad(J, c)
                d = agg(J, mtgrad.CAGrad(c=c))
                rho = c * np.linalg.norm(g0)
                if unique:
                    e = np.linalg.norm(d - d_ref) / np.linalg.norm(d_ref)
                    if e > worst["ca_vec"]:
                        worst["ca_vec"], arg["ca_vec"] = e, (J, c)
                scale = gmax * np.linalg.norm(g0) * (1 + c)
                if scale > 0:
                    e = abs(ref.cagrad_value(J, d) - v_ref) / scale
                    if e > worst["ca_val"]:
                        worst["ca_val"], arg["ca_val"] = e, (J, c)
                if rho > 0:
                    worst["ca_feas"] = max(worst["ca_feas"], max(0.0, np.linalg.norm(d - g0) - rho) / rho)
        rows.append((kind, worst))
    hdr = f"{'family':10s} {'PCGrad rel':>11s} {'PCGrad abs':>11s} {'MGDA rel':>10s} {'MGDA abs':>10s} {'CAG vec':>10s} {'CAG val':>10s} {'CAG feas':>10s}"
    print(f"n={n} matrices per family, T in 2..6, d in 2..50, c in {CS}")
    print(hdr)
    for kind, w in rows:
        print(
            f"{kind:10s} {w['pc']:11.2e} {w['pc_abs']:11.2e} {w['mg_rel']:10.2e} {w['mg_abs']:10.2e} {w['ca_vec']:10.2e} {w['ca_val']:10.2e} {w['ca_feas']:10.2e}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
