"""The PromQL name extraction and the exposition's names that tests/deploy/test_observability.py
relies on: a name it misses would let a renamed metric through."""

from __future__ import annotations

import pytest

from tests.support.promql import exported_names, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ("citadel_server_csr_count", {"citadel_server_csr_count"}),
        ('rate(x_total{reason!="shut_down", job=~"a|b"}[5m])', {"x_total"}),
        ("sum by (job, reason) (increase(x_total[5m])) > 0", {"x_total"}),
        ("sum(rate(x_total[5m])) by (le)", {"x_total"}),
        ("sum without (instance) (x)", {"x"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(meshca_issuance_duration_bucket[$__rate_interval])))",
            {"meshca_issuance_duration_bucket"},
        ),
        ("min by (job) (a) - time() < 30 * 24 * 3600", {"a"}),
        ("(sum(rate(a[10m])) - sum(rate(b[10m]))) / sum(rate(a[10m])) > 0.05", {"a", "b"}),
        ("a < time()", {"a"}),
        ("count(a < time()) or vector(0)", {"a"}),
        ("a and on (instance) group_left (reason) b", {"a", "b"}),
        ("a unless ignoring(pod) b", {"a", "b"}),
        ("a > bool 1e-9", {"a"}),
        ("a offset 1h30m", {"a"}),
        ("a @ start()", {"a"}),
        ("rate(a[5m:30s])", {"a"}),
        ('label_replace(a, "dst", "$1", "src", "(b.*)")', {"a"}),
        ('count_values("version", build_info)', {"build_info"}),
        ("topk(10, a) + inf - nan", {"a"}),
        ("sum(increase(x_total[$__range])) / ${scale}", {"x_total"}),
        ("job:requests:rate5m", {"job:requests:rate5m"}),
        ('a{path="}{"} # a comment naming b', {"a"}),
        ("SUM BY (le) (a)", {"a"}),
        ("bottomk(10, a - time())", {"a"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize("expr", ['a{b="c}', "sum(a", "sum(a))", 'a + "open'])
def test_an_unbalanced_expression_is_an_error_not_a_guess(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names(expr)


EXPOSITION = """\
# HELP c_total A counter with a label, never counted yet.
# TYPE c_total counter
# HELP d_total A counter.
# TYPE d_total counter
d_total 2.0
# HELP d_created A counter's start.
# TYPE d_created gauge
d_created 1.7e+09
# HELP h A histogram with no observations.
# TYPE h histogram
h_bucket{le="+Inf"} 0.0
h_count 0.0
h_sum 0.0
# HELP e A histogram family without samples.
# TYPE e histogram
# HELP g A gauge.
# TYPE g gauge
g 1.0
# HELP u An Istio-named counter, exported untyped.
# TYPE u untyped
u 3.0
# HELP v An untyped family without samples.
# TYPE v untyped
"""


def test_exported_names_with_and_without_samples() -> None:
    assert exported_names(EXPOSITION) == {
        "c_total",
        "d_total",
        "d_created",
        "h_bucket",
        "h_count",
        "h_sum",
        "e_bucket",
        "e_count",
        "e_sum",
        "g",
        "u",
        "v",
    }
