"""`creditlab gradcheck`: the backward sweep against finite differences and autograd."""

from __future__ import annotations

import sys

TOLERANCE_FD = 1e-4  # central differences in float64 with eps 1e-6 (round-off ~1e-10)
TOLERANCE_AUTOGRAD = 1e-9


def register(sub) -> None:
    """`creditlab gradcheck`: the backward sweep against finite differences and autograd."""
    p = sub.add_parser("gradcheck", help="check bp against finite differences and autograd")
    p.add_argument("--trials", type=int, default=6, help="random networks per loss")
    p.add_argument("--seed", type=int, default=0, help="seed of the random networks")
    p.add_argument(
        "--tol-fd",
        type=float,
        default=TOLERANCE_FD,
        help="largest relative error allowed against central finite differences",
    )
    p.add_argument(
        "--tol-autograd",
        type=float,
        default=TOLERANCE_AUTOGRAD,
        help="largest relative error allowed against torch.autograd",
    )
    p.set_defaults(func=cmd_gradcheck)


def cmd_gradcheck(args) -> int:
    from creditlab.checks import gradcheck

    tol_fd = gradcheck.check_tolerance("--tol-fd", args.tol_fd)
    tol_autograd = gradcheck.check_tolerance("--tol-autograd", args.tol_autograd)
    results = gradcheck.run(trials=args.trials, seed=args.seed)
    failed = 0
    print(f"{'case':32s} {'parameter':22s} {'rel. err vs FD':>15s} {'vs autograd':>12s}")
    for result in results:
        for name, (fd, ag) in result.errors.items():
            fd_ok = not result.fd_applies or gradcheck.within(fd, tol_fd)
            bad = not (fd_ok and gradcheck.within(ag, tol_autograd))
            failed += bad
            mark = "  MISMATCH" if bad else ""
            fd_text = f"{fd:.2e}" if result.fd_applies else "n/a"  # see CheckResult
            print(f"{result.case:32s} {name:22s} {fd_text:>15s} {ag:12.2e}{mark}")
    # Routed capsules with routing_gradient=False are checked against autograd only (their
    # couplings are constants by design, so finite differences of the loss do not apply).
    worst_fd = gradcheck.worst_of(r.worst()[0] for r in results if r.fd_applies)
    worst_ag = gradcheck.worst_of(r.worst()[1] for r in results)
    print(
        f"{len(results)} networks: largest relative error {worst_fd:.2e} against finite "
        f"differences (tolerance {args.tol_fd:g}), {worst_ag:.2e} against autograd "
        f"(tolerance {args.tol_autograd:g})"
    )
    if failed:
        print(f"gradcheck FAILED: {failed} parameter(s) mismatch", file=sys.stderr)
        return 1
    print("gradcheck passed")
    return 0
