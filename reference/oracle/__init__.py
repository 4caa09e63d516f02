"""handgrad's oracle, in parts with one job each.

* :mod:`.vjp`: ``check_vjp``, its stages in order;
* :mod:`.subjects`: what is checked: fn's VJP, or (order 2) the VJP of its VJP;
* :mod:`.refusals`: what is refused before anything is checked (a non-deterministic function too);
* :mod:`.setup`: fn as called, and each entry's scales, steps and differences (stages 1 and 3);
* :mod:`.versions`, :mod:`.precision`: ways of evaluating fn, and which one the numbers come from (stage 2);
* :mod:`.jaxprs`: what fn's jaxpr says: the precision it computes in, its constants, primitives and loops;
* :mod:`.differences`, :mod:`.programs`: the finite-difference engine, at several levels of steps, and its
  compiled probes;
* :mod:`.verdict`: judging the probes (Richardson, kinks, jumps, the step that fits);
* :mod:`.search`: needles in large leaves, by signed blocks;
* :mod:`.entries`: entries judged one by one, at finer and coarser steps (stage 4);
* :mod:`.tally`: the verdicts folded into each leaf's figures and the mismatches;
* :mod:`.rounding`: what rounding explains (natural scale, input noise, the forward's rounding);
* :mod:`.compare`: the checked VJP against the call's own (precision) and the reference's;
* :mod:`.solvers`: while loops run longer, their stopping error measured;
* :mod:`.cotangents`: the cotangents, each output's part scaled to its own size;
* :mod:`.report`: the records (``VJPReport``, ``Mismatch``, ``VJPMismatch``) and the refusals (``CheckRefused``);
* :mod:`.tolerance`: the one tolerance policy, shared with ``check_transforms`` and the laws;
* :mod:`.transforms`, :mod:`.transformed`: ``check_transforms``, and the programs it compares;
* :mod:`.numerical`: float64 differences for users;
* :mod:`.plot`: the picture of a check (matplotlib, imported when drawn).
"""

from reference.oracle.numerical import max_abs_diff, numerical_grad, numerical_vjp
from reference.oracle.report import (
    CheckRefused,
    FnRaised,
    LeafReport,
    Loops,
    Method,
    Mismatch,
    NotDifferentiable,
    RefusedType,
    RefusedValue,
    VJPMismatch,
    VJPReport,
)
from reference.oracle.transforms import TransformMismatch, TransformProblem, TransformReport, check_transforms
from reference.oracle.vjp import check_vjp

__all__ = ["check_vjp", "check_transforms", "numerical_grad", "numerical_vjp", "max_abs_diff", "VJPReport",
           "LeafReport", "Loops", "Method", "Mismatch", "VJPMismatch", "TransformReport", "TransformProblem",
           "TransformMismatch",
           "CheckRefused", "FnRaised", "RefusedType", "RefusedValue", "NotDifferentiable"]
