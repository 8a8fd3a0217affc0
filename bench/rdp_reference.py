#!/usr/bin/python3
"""Reference RDP accountant for the Poisson-subsampled Gaussian mechanism, used to check dp/accountant.c.

A line-by-line port of TensorFlow Privacy's
    tensorflow_privacy/privacy/analysis/rdp_accountant.py
(github.com/tensorflow/privacy, the version with `_log_comb` and the improved `_compute_eps` of
Canonne-Kamath-Steinke 2020 Prop. 12 / Asoodeh et al. 2020 Eq. 20; Apache-2.0), which implements
Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism".
It is written in pure Python with `math` only (no numpy / scipy: this machine has no scipy), so:
  * scipy.special.gammaln  -> math.lgamma                                  (_log_comb)
  * scipy.special.binom(alpha, i) for real alpha -> the running product binom(alpha, i-1) (alpha-i+1)/i
  * _log_erfc: TF takes log(2) + scipy.special.log_ndtr(-x*sqrt(2)).  Its own fallback (log of
    erfc, Laurent series when erfc underflows to 0.0) loses digits when erfc(x) is subnormal
    (x in about (26.5, 27.3)); we switch to the series as soon as erfc(x) would be below the
    smallest normal double (x > 26), which agrees with log_ndtr to ~1e-13 there.
  * the classic conversion is TF's older `_compute_eps` (Mironov 2017 Prop. 3):
        eps = min_a rdp_a - log(delta) / (a - 1).
Everything else (stopping rule `max(log_s0, log_s1) < -30`, log-space add/sub, q == 0, q == 1,
the KL shortcut and the a > 1.01 rule in the improved conversion) is TF's, statement for statement.

A second, independent check (`--mpmath`) computes A_alpha by numerical integration at 50 digits:
    A_alpha = E_{z ~ N(0, s^2)} [ ((1 - q) + q exp((2z - 1) / (2 s^2)))^alpha ]
which shares no code path with either series.

Usage:
    bench/rdp_reference.py                 anchors (Abadi et al. 2016, TF MNIST tutorial)
    bench/rdp_reference.py --emit-c        the C table pasted into tests/test_accountant.c
    bench/rdp_reference.py --mpmath        compare the TF port with mpmath quadrature
"""
import math
import sys

# The default orders of TF Privacy's compute_dp_sgd_privacy and of Opacus.
DEFAULT_ORDERS = [1 + x / 10. for x in range(1, 100)] + list(range(12, 64))


########################
# LOG-SPACE ARITHMETIC #
########################


def _log_add(logx, logy):
    """Add two numbers in the log space."""
    a, b = min(logx, logy), max(logx, logy)
    return b if a == -math.inf else math.log1p(math.exp(a - b)) + b


def _log_sub(logx, logy):
    """Subtract two numbers in the log space. Answer must be non-negative."""
    if logx < logy:
        raise ValueError("The result of subtraction must be non-negative.")
    if logy == -math.inf:  # subtracting 0
        return logx
    if logx == logy:
        return -math.inf  # 0 is represented as -np.inf in the log space.

    try:
        # Use exp(x) - exp(y) = (exp(x - y) - 1) * exp(y).
        return math.log(math.expm1(logx - logy)) + logy  # expm1(x) = exp(x) - 1
    except OverflowError:
        return logx


def _log_comb(n, k):
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _compute_log_a_int(q, sigma, alpha):
    """Compute log(A_alpha) for integer alpha. 0 < q < 1."""
    assert isinstance(alpha, int)

    # Initialize with 0 in the log space.
    log_a = -math.inf

    for i in range(alpha + 1):
        log_coef_i = (
            _log_comb(alpha, i) + i * math.log(q) + (alpha - i) * math.log(1 - q))

        s = log_coef_i + (i * i - i) / (2 * (sigma**2))
        log_a = _log_add(log_a, s)

    return float(log_a)


def _compute_log_a_frac(q, sigma, alpha):
    """Compute log(A_alpha) for fractional alpha. 0 < q < 1."""
    # The two parts of A_alpha, integrals over (-inf,z0] and [z0, +inf), are
    # initialized to 0 in the log space:
    log_a0, log_a1 = -math.inf, -math.inf
    i = 0

    z0 = sigma**2 * math.log(1 / q - 1) + .5

    coef = 1.0
    while True:  # do ... until loop
        # scipy.special.binom(alpha, i), kept as a running product (O(1) per term).
        if i > 0:
            coef *= (alpha - i + 1) / i
        log_coef = math.log(abs(coef))
        j = alpha - i

        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)

        log_e0 = math.log(.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))

        log_s0 = log_t0 + (i * i - i) / (2 * (sigma**2)) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * (sigma**2)) + log_e1

        if coef > 0:
            log_a0 = _log_add(log_a0, log_s0)
            log_a1 = _log_add(log_a1, log_s1)
        else:
            log_a0 = _log_sub(log_a0, log_s0)
            log_a1 = _log_sub(log_a1, log_s1)

        i += 1
        if max(log_s0, log_s1) < -30:
            break

    return _log_add(log_a0, log_a1)


def _compute_log_a(q, sigma, alpha):
    """Compute log(A_alpha) for any positive finite alpha."""
    if float(alpha).is_integer():
        return _compute_log_a_int(q, sigma, int(alpha))
    else:
        return _compute_log_a_frac(q, sigma, alpha)


def _log_erfc(x):
    """Compute log(erfc(x)) with high accuracy for large x."""
    if x <= 26.0:  # erfc(26) ~ 5.7e-296 is still a normal double
        return math.log(math.erfc(x))
    # Using the Laurent series at infinity for the tail of the erfc function:
    #     erfc(x) ~ exp(-x^2-.5/x^2+.625/x^4)/(x*pi^.5)
    # To verify in Mathematica:
    #     Series[Log[Erfc[x]] + Log[x] + Log[Pi]/2 + x^2, {x, Infinity, 6}]
    return (-math.log(math.pi) / 2 - math.log(x) - x**2 - .5 * x**-2 +
            .625 * x**-4 - 37. / 24. * x**-6 + 353. / 64. * x**-8)


def _compute_eps_improved(orders, rdp, delta):
    """TF's _compute_eps: https://arxiv.org/abs/2004.00010 Proposition 12 (in v4)."""
    if delta <= 0:
        raise ValueError("Privacy failure probability bound delta must be >0.")
    eps_vec = []
    for (a, r) in zip(orders, rdp):
        if a < 1:
            raise ValueError("Renyi divergence order must be >=1.")
        if r < 0:
            raise ValueError("Renyi divergence must be >=0.")

        if delta**2 + math.expm1(-r) >= 0:
            # In this case, we can simply bound via KL divergence:
            # delta <= sqrt(1-exp(-KL)).
            eps = 0  # No need to try further computation if we have eps = 0.
        elif a > 1.01:
            # This bound is not numerically stable as alpha->1.
            # Thus we have a min value of alpha.
            # The bound is also not useful for small alpha, so doesn't matter.
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            # In this case we can't do anything. E.g., asking for delta = 0.
            eps = math.inf
        eps_vec.append(eps)

    idx_opt = min(range(len(eps_vec)), key=lambda k: eps_vec[k])  # np.argmin: first minimum
    return max(0, eps_vec[idx_opt]), orders[idx_opt]


def _compute_eps_classic(orders, rdp, delta):
    """TF's older _compute_eps: https://arxiv.org/abs/1702.07476 Proposition 3 (in v3)."""
    eps = [r - math.log(delta) / (a - 1) for (a, r) in zip(orders, rdp)]
    idx_opt = min(range(len(eps)), key=lambda k: eps[k])
    return eps[idx_opt], orders[idx_opt]


def _compute_rdp(q, sigma, alpha):
    """Compute RDP of the Sampled Gaussian mechanism at order alpha."""
    if q == 0:
        return 0

    if q == 1.:
        return alpha / (2 * sigma**2)

    if math.isinf(alpha):
        return math.inf

    return _compute_log_a(q, sigma, alpha) / (alpha - 1)


def compute_rdp(q, noise_multiplier, steps, orders):
    """Computes RDP of the Sampled Gaussian Mechanism, at every order, times steps."""
    return [_compute_rdp(q, noise_multiplier, order) * steps for order in orders]


def get_privacy_spent(orders, rdp, target_delta, conversion="improved"):
    """Returns (eps, delta, opt_order)."""
    if conversion == "improved":
        eps, opt_order = _compute_eps_improved(orders, rdp, target_delta)
    else:
        eps, opt_order = _compute_eps_classic(orders, rdp, target_delta)
    return eps, target_delta, opt_order


#################
# fedprof parts #
#################

GRID_Q = [0.001, 0.01, 0.1, 0.5, 1.0]
GRID_SIGMA = [0.5, 0.8, 1.1, 2.0, 4.0, 10.0]
GRID_STEPS = [1, 100, 10000]
GRID_DELTA = 1e-5


def anchors():
    cases = [("Abadi et al. 2016", 0.01, 4.0, 10000),
             ("TF MNIST tutorial, 60 epochs, ceil", 256 / 60000, 1.1, 14063),
             ("TF MNIST tutorial, 60 epochs, floor", 256 / 60000, 1.1, 14062),
             ("TF MNIST tutorial, 15 epochs", 256 / 60000, 1.1, math.ceil(15 * 60000 / 256))]
    for name, q, s, t in cases:
        rdp = compute_rdp(q, s, t, DEFAULT_ORDERS)
        for conv in ("classic", "improved"):
            eps, _, order = get_privacy_spent(DEFAULT_ORDERS, rdp, GRID_DELTA, conv)
            print(f"{name:38s} q={q:.10g} sigma={s:g} T={t:6d} {conv:8s}: eps={eps:.10f} order={order:g}")


def emit_c():
    """One row per (q, sigma): the one-step RDP at every default order. Then eps for each T."""
    out = []
    out.append("/* Generated by `bench/rdp_reference.py --emit-c` (TF Privacy rdp_accountant.py port); */")
    out.append("/* regenerate with that command and paste; never edit the numbers by hand. */")
    out.append(f"#define REF_NORDERS {len(DEFAULT_ORDERS)}")
    out.append(f"#define REF_DELTA {GRID_DELTA!r}")
    out.append("static const double ref_orders[REF_NORDERS] = {")
    out.extend(_c_rows([f"{a!r}" for a in DEFAULT_ORDERS]))
    out.append("};")
    out.append("typedef struct {")
    out.append("    double q, sigma;")
    out.append("    double rdp[REF_NORDERS]; /* one step */")
    out.append("} ref_rdp_t;")
    out.append("static const ref_rdp_t ref_rdp[] = {")
    for q in GRID_Q:
        for s in GRID_SIGMA:
            rdp = compute_rdp(q, s, 1, DEFAULT_ORDERS)
            out.append(f"    {{{q!r}, {s!r}, {{")
            out.extend(_c_rows([f"{float(r)!r}" for r in rdp], indent=8))
            out.append("    }},")
    out.append("};")
    out.append("typedef struct {")
    out.append("    double q, sigma;")
    out.append("    long long steps;")
    out.append("    double eps_improved, order_improved, eps_classic, order_classic;")
    out.append("} ref_eps_t;")
    out.append("static const ref_eps_t ref_eps[] = {")
    for q in GRID_Q:
        for s in GRID_SIGMA:
            for t in GRID_STEPS:
                rdp = compute_rdp(q, s, t, DEFAULT_ORDERS)
                ei, _, oi = get_privacy_spent(DEFAULT_ORDERS, rdp, GRID_DELTA, "improved")
                ec, _, oc = get_privacy_spent(DEFAULT_ORDERS, rdp, GRID_DELTA, "classic")
                out.append(f"    {{{q!r}, {s!r}, {t}, {float(ei)!r}, {float(oi)!r}, "
                           f"{float(ec)!r}, {float(oc)!r}}},")
    out.append("};")
    print("\n".join(out))


def _c_rows(vals, indent=4, width=116):
    """Pack comma-separated values into lines of at most `width` characters."""
    rows, line = [], ""
    for v in vals:
        piece = v + ","
        if line and len(" " * indent + line + " " + piece) > width:
            rows.append(" " * indent + line)
            line = ""
        line = piece if not line else line + " " + piece
    if line:
        rows.append(" " * indent + line)
    return rows


def mpmath_check():
    """Independent check: A_alpha by 50-digit quadrature vs the TF port, over the whole grid."""
    import mpmath
    mpmath.mp.dps = 50
    worst, worst_abs, failures = 0.0, 0.0, 0
    for q in GRID_Q[:-1]:
        for s in GRID_SIGMA:
            mq, ms = mpmath.mpf(q), mpmath.mpf(s)
            for a in DEFAULT_ORDERS:
                ma = mpmath.mpf(a)

                def f(z):
                    ratio = (1 - mq) + mq * mpmath.exp((2 * z - 1) / (2 * ms * ms))
                    return mpmath.npdf(z, 0, ms) * ratio**ma
                # Split at the mode of each Gaussian and at the crossing point z0 for accuracy.
                z0 = ms * ms * mpmath.log(1 / mq - 1) + mpmath.mpf(1) / 2
                pts = sorted({-60 * ms, mpmath.mpf(0), mpmath.mpf(1), z0, ma, 60 * ms + ma + abs(z0)})
                pts = [-mpmath.inf] + pts + [mpmath.inf]
                a_alpha = mpmath.quad(f, pts)
                ref = float(mpmath.log(a_alpha) / (ma - 1))
                got = _compute_rdp(q, s, a)
                err = abs(got - ref)
                worst_abs = max(worst_abs, err)
                if ref > 1e-6:
                    worst = max(worst, err / ref)
                # The bar of tests/test_accountant.c: 1e-6 relative or 1e-12 absolute.
                if err > 1e-6 * ref and err > 1e-12:
                    failures += 1
                    print(f"q={q} sigma={s} alpha={a}: tf={got!r} mpmath={ref!r} rel={err / ref:.3g}")
    print(f"worst relative difference where rdp > 1e-6: {worst:.3g}; worst absolute: {worst_abs:.3g}; "
          f"{failures} outside 1e-6 relative / 1e-12 absolute")
    return failures


if __name__ == "__main__":
    if "--emit-c" in sys.argv[1:]:
        emit_c()
    elif "--mpmath" in sys.argv[1:]:
        sys.exit(1 if mpmath_check() else 0)
    else:
        anchors()
