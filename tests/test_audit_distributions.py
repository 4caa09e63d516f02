"""Distributions audited from their own constraints (handgrad.audit.distributions), on numpyro's."""

import numpy as np
import pytest

from handgrad.audit import FunctionConfig, discover
from handgrad.audit.checks import run_check
from handgrad.audit.distributions import BRANCH, BRANCH_DRAW, drawer, parameters

numpyro_distributions = pytest.importorskip("numpyro.distributions")
NAMES = ["*:DoublyTruncatedPowerLaw.*", "*:Normal.*", "*:Gamma.rsample", "*:Dirichlet.log_prob"]


@pytest.fixture(scope="module")
def rules():
    found = discover("numpyro.distributions", include=NAMES)  # the package, as `handgrad audit` takes it
    return {r.name.partition(":")[2]: r for r in found.rules}


def test_every_method_a_distribution_defines_is_a_rule(rules):
    assert {"DoublyTruncatedPowerLaw.log_prob", "DoublyTruncatedPowerLaw.cdf", "DoublyTruncatedPowerLaw.icdf",
            "Normal.log_prob", "Normal.cdf", "Normal.icdf", "Normal.rsample", "Gamma.rsample",
            "Dirichlet.log_prob"} <= set(rules)
    assert "DoublyTruncatedPowerLaw.rsample" not in rules or rules["DoublyTruncatedPowerLaw.rsample"].kind == \
        "distribution"


def test_draws_respect_the_constraints_and_the_order_of_low_and_high():
    cls = numpyro_distributions.DoublyTruncatedPowerLaw
    names = parameters(cls)
    assert names == ["alpha", "low", "high"]
    for draw in range(3):
        alpha, low, high, value = (np.asarray(a) for a in drawer(cls, "log_prob", names)(draw, 0).args)
        assert np.all(low >= 0) and np.all(high > low) and np.all((value > low) & (value < high))
        assert np.all(alpha == BRANCH) == (draw == BRANCH_DRAW)  # the power law's branch point, alpha = -1


def test_the_doubly_truncated_power_law_bugs_are_found(rules):
    log_prob = run_check(rules["DoublyTruncatedPowerLaw.log_prob"], "vjp", FunctionConfig(), 0)
    assert log_prob.status == "FAIL" and ("args[1]" in log_prob.detail or "args[2]" in log_prob.detail)  # low, high
    cdf = run_check(rules["DoublyTruncatedPowerLaw.cdf"], "vjp", FunctionConfig(), 0)
    assert cdf.status == "FAIL" and "[draw 2]" in cdf.detail and "args[2]" in cdf.detail  # d/dhigh at alpha = -1


@pytest.mark.parametrize("name", ["Normal.log_prob", "Normal.cdf", "Normal.icdf", "Normal.rsample",
                                  "Dirichlet.log_prob"])
def test_correct_distributions_pass(rules, name):
    row = run_check(rules[name], "vjp", FunctionConfig(), 0)
    assert row.status in ("ok", "note"), row.detail


def test_a_sampler_with_an_implicit_reparametrization_is_expected_not_failed(rules):
    row = run_check(rules["Gamma.rsample"], "vjp", FunctionConfig(), 0)
    assert row.status == "expected" and "implicit reparametrization" in row.detail


def test_catastrophic_cancellation_at_the_branch_is_rounding_under_transformations(rules):
    row = run_check(rules["DoublyTruncatedPowerLaw.cdf"], "transformations", FunctionConfig(), 0)
    assert row.status == "ok", row.detail  # numpyro's alpha = -1 branch: jit and eager differ by rounding alone
