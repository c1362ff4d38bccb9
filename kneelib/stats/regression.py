"""Nested logistic regressions and the likelihood-ratio test (paper 001, Table 3).

Paper 001 (Morales et al. 2021), Methods, last paragraph of "Grad-CAM interpretation":
"Two logistic regression models were built to predict chronic knee pain, both with age,
BMI, sex, and clinical compartment cartilage thickness averages, and one with DL-guided
cartilage thickness averages. The performance of the nested models was compared using a
likelihood ratio chi^2 test". Table 3 prints, per bone and model, each variable's
estimate, standard error and p-value, a "ROC (sensitivity/specificity/AUC)" triplet in
percent, and the likelihood-ratio p-value (femur 7.01e-33, tibia 1.93e-14).

What is fitted here: statsmodels ``Logit`` by maximum likelihood (Newton), with an
intercept, on the raw values (no scaling); Wald z and two-sided p-values from the normal
distribution; odds ratios ``exp(b)`` with Wald CIs. The ROC triplet is in-sample, on the
fitted probabilities: sensitivity and specificity at the 0.5 threshold and the ROC AUC
(this reproduces all six printed triplets of Table 3 on the authors' data). Tail
probabilities use survival functions (``norm.sf``, ``chi2.sf``), so p-values such as
7.01e-33 are exact; below the double range the ``log10`` columns still hold them.

:func:`table3` composes the fits into the paper's table; :func:`compare_with_printed`
sets it beside the printed numbers of ``book/published.yml`` to the printed digits.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

__all__ = [
    "RegressionFitError", "RocTriplet", "LogisticFit", "LikelihoodRatioTest",
    "fit_logistic", "likelihood_ratio_test",
    "TABLE3_COMPARTMENT_LABELS", "table3", "round_as_printed", "compare_with_printed",
]

INTERCEPT = "Intercept"


class RegressionFitError(ValueError):
    """A regression cannot be fitted (bad table, separation, no convergence) or compared."""


@dataclass(frozen=True)
class RocTriplet:
    """Table 3's "ROC (sensitivity/specificity/AUC)" of one model, as fractions."""

    sensitivity: float
    specificity: float
    auc: float
    threshold: float = 0.5

    def percent(self) -> tuple[float, float, float]:
        """The triplet in percent, as Table 3 prints it."""
        return 100 * self.sensitivity, 100 * self.specificity, 100 * self.auc


@dataclass(frozen=True)
class LogisticFit:
    """One maximum-likelihood logistic regression.

    Attributes
    ----------
    outcome, covariates :
        Column names used (``covariates`` without the intercept).
    coefficients : pandas.DataFrame
        Index ``Intercept`` then the covariates; columns ``estimate``, ``std_error``,
        ``z``, ``p_value``, ``log10_p_value``, ``odds_ratio``, ``or_ci_low``, ``or_ci_high``.
    log_likelihood : float
    n, n_positive : int
    roc : RocTriplet
        In-sample sensitivity/specificity at 0.5 and AUC of the fitted probabilities.
    probabilities : numpy.ndarray
        Fitted probabilities, one per row.
    rows_digest : str
        Hash of the outcome vector, so that :func:`likelihood_ratio_test` can check two
        fits saw the same rows.
    """

    outcome: str
    covariates: tuple[str, ...]
    coefficients: pd.DataFrame
    log_likelihood: float
    n: int
    n_positive: int
    roc: RocTriplet
    probabilities: np.ndarray = field(repr=False)
    rows_digest: str = field(repr=False)
    level: float = 0.95

    @property
    def n_parameters(self) -> int:
        """Number of estimated parameters (intercept included)."""
        return len(self.coefficients)


@dataclass(frozen=True)
class LikelihoodRatioTest:
    """Likelihood-ratio chi-square test of two nested models."""

    statistic: float
    df: int
    p_value: float
    log10_p_value: float


def _digest(values: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


def fit_logistic(table: pd.DataFrame, outcome: str, covariates: Sequence[str], *,
                 threshold: float = 0.5, level: float = 0.95) -> LogisticFit:
    """Fit a logistic regression by maximum likelihood, with an intercept, on raw values.

    Paper 001, Methods ("Grad-CAM interpretation", last paragraph) and Table 3.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per knee.
    outcome : str
        Binary 0/1 column.
    covariates : sequence of str
        Columns entered as they are (no scaling); an intercept is added. Empty: the
        intercept-only model.
    threshold : float, default 0.5
        Probability at or above which a row is called positive, for the sensitivity and
        specificity of :class:`RocTriplet`.
    level : float, default 0.95
        Level of the odds-ratio confidence intervals (Wald).

    Returns
    -------
    LogisticFit

    Raises
    ------
    RegressionFitError
        A column is missing, a value is missing or non-numeric, the outcome is not 0/1
        with both classes, the design is rank-deficient, the classes are perfectly
        separated, or Newton's method does not converge.
    """
    import statsmodels.api as sm

    covariates = tuple(covariates)
    if INTERCEPT in covariates or len(set(covariates)) != len(covariates) or outcome in covariates:
        raise RegressionFitError(f"covariates must be distinct, exclude {INTERCEPT!r} and the outcome: {covariates}")
    missing = [c for c in (outcome, *covariates) if c not in table.columns]
    if missing:
        raise RegressionFitError(f"table lacks columns {missing} (has {list(table.columns)})")
    data = table[[outcome, *covariates]].apply(pd.to_numeric, errors="coerce")
    if data.isna().any().any():
        bad = data.columns[data.isna().any()].tolist()
        raise RegressionFitError(f"missing or non-numeric values in {bad}; drop or impute them first")
    y = data[outcome].to_numpy(dtype=float)
    if not np.isin(y, (0.0, 1.0)).all() or len(np.unique(y)) < 2:
        raise RegressionFitError(f"outcome {outcome!r} must be 0/1 with both classes present")
    design = np.column_stack([np.ones(len(y)), data[list(covariates)].to_numpy(dtype=float)])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise RegressionFitError(f"design matrix (intercept + {list(covariates)}) is rank-deficient")
    with warnings.catch_warnings():
        try:
            from statsmodels.tools.sm_exceptions import PerfectSeparationWarning
            warnings.simplefilter("error", category=PerfectSeparationWarning)
        except ImportError:  # pragma: no cover - older statsmodels raise instead of warning
            pass
        try:
            result = sm.Logit(y, design).fit(method="newton", maxiter=100, disp=0)
        except Exception as error:  # separation (error, or warning turned error), singular Hessian
            raise RegressionFitError(f"logistic fit of {outcome!r} on {list(covariates)} failed: {error}") from error
    if not result.mle_retvals.get("converged", False):
        raise RegressionFitError(f"logistic fit of {outcome!r} on {list(covariates)} did not converge")
    names = [INTERCEPT, *covariates]
    estimate = np.asarray(result.params, dtype=float)
    std_error = np.asarray(result.bse, dtype=float)
    z = estimate / std_error
    # Two-sided Wald p = 2 sf(|z|); log form via logsf keeps it below the double range.
    log_p = stats.norm.logsf(np.abs(z)) + math.log(2)
    p_value = 2 * stats.norm.sf(np.abs(z))
    quantile = stats.norm.ppf(0.5 + level / 2)
    coefficients = pd.DataFrame({
        "estimate": estimate, "std_error": std_error, "z": z, "p_value": p_value,
        "log10_p_value": log_p / math.log(10),
        "odds_ratio": np.exp(estimate),
        "or_ci_low": np.exp(estimate - quantile * std_error),
        "or_ci_high": np.exp(estimate + quantile * std_error),
    }, index=pd.Index(names, name="variable"))
    probabilities = np.asarray(result.predict(design), dtype=float)
    called = probabilities >= threshold
    positive = y == 1
    roc = RocTriplet(sensitivity=float(called[positive].mean()), specificity=float((~called[~positive]).mean()),
                     auc=float(roc_auc_score(y, probabilities)), threshold=threshold)
    return LogisticFit(outcome=outcome, covariates=covariates, coefficients=coefficients,
                       log_likelihood=float(result.llf), n=len(y), n_positive=int(positive.sum()), roc=roc,
                       probabilities=probabilities, rows_digest=_digest(y), level=level)


def likelihood_ratio_test(reduced: LogisticFit, full: LogisticFit) -> LikelihoodRatioTest:
    """Likelihood-ratio chi-square test of a reduced model nested in a full one.

    Paper 001, Methods: "The performance of the nested models was compared using a
    likelihood ratio chi^2 test"; Table 3 prints its p-values (femur 7.01e-33, tibia
    1.93e-14). ``statistic = 2 (llf_full - llf_reduced)``, ``df`` = number of added
    parameters, ``p = chi2.sf(statistic, df)`` (exact in the far tail; ``log10_p_value``
    from ``chi2.logsf`` holds it even below the double range).

    Raises
    ------
    RegressionFitError
        Different outcomes or rows, or the reduced covariates not a proper subset of the
        full ones.
    """
    if reduced.outcome != full.outcome or reduced.n != full.n or reduced.rows_digest != full.rows_digest:
        raise RegressionFitError("the two fits were not made on the same outcome and rows")
    if not set(reduced.covariates) < set(full.covariates):
        raise RegressionFitError(f"models are not nested: {list(reduced.covariates)} is not a proper subset "
                                 f"of {list(full.covariates)}")
    df = full.n_parameters - reduced.n_parameters
    statistic = max(0.0, 2.0 * (full.log_likelihood - reduced.log_likelihood))  # >= 0 up to rounding
    return LikelihoodRatioTest(statistic=statistic, df=df, p_value=float(stats.chi2.sf(statistic, df)),
                               log10_p_value=float(stats.chi2.logsf(statistic, df) / math.log(10)))


#: Table 3's labels of the lateral / medial compartment averages per bone.
TABLE3_COMPARTMENT_LABELS = {
    "femur": ("LF thickness", "MF thickness"),
    "tibia": ("LT thickness", "MT thickness"),
    "patella": ("L thickness", "M thickness"),
}
_MODELS = (("classical", "Classical: clinical compartment average"),
           ("dl_guided", "Proposed: DL-guided weighted average"))


def table3(tables: Mapping[str, pd.DataFrame], *, outcome: str = "Outcome",
           demographics: Sequence[str] = ("Age", "BMI", "Sex"), compartments: Sequence[str] = ("LF", "MF"),
           dl_guided: str = "DLROI", threshold: float = 0.5) -> pd.DataFrame:
    """Paper 001, Table 3: classical and DL-guided logistic regressions per bone and their LRT.

    Per bone, the classical model (demographics + the two compartment averages) and the
    DL-guided model (the same + the DL-guided average), fitted with :func:`fit_logistic`,
    compared with :func:`likelihood_ratio_test`.

    Parameters
    ----------
    tables : mapping of str to pandas.DataFrame
        Per-bone tables, e.g. :func:`kneelib.data.deep_pain.load_table3_data` (real) or the
        synthetic cohort's per-knee thickness table with the same columns.
    outcome, demographics, compartments, dl_guided : column names
        ``compartments`` is (lateral, medial), labelled as in the paper per bone
        (:data:`TABLE3_COMPARTMENT_LABELS`); ``dl_guided`` is labelled "DL-thickness".
    threshold : float, default 0.5
        Threshold of the sensitivity/specificity.

    Returns
    -------
    pandas.DataFrame
        Index (bone, model, variable) with model in ("classical", "dl_guided") and the
        paper's variable labels; columns ``method`` (the paper's wording), ``estimate``,
        ``std_error``, ``z``, ``p_value``, ``log10_p_value``, ``odds_ratio``,
        ``or_ci_low``, ``or_ci_high``, ``n``, ``log_likelihood`` and the model-level
        ``sensitivity``, ``specificity``, ``auc`` (percent, as printed), ``lrt_statistic``,
        ``lrt_df``, ``lrt_p_value``, ``lrt_log10_p_value`` (the LRT on both models' rows),
        filled on every row of the model.
    """
    lateral, medial = compartments
    frames = []
    for bone, table in tables.items():
        labels = TABLE3_COMPARTMENT_LABELS.get(bone, ("L thickness", "M thickness"))
        rename = {lateral: labels[0], medial: labels[1], dl_guided: "DL-thickness"}
        base = [*demographics, lateral, medial]
        fits = {"classical": fit_logistic(table, outcome, base, threshold=threshold),
                "dl_guided": fit_logistic(table, outcome, [*base, dl_guided], threshold=threshold)}
        lrt = likelihood_ratio_test(fits["classical"], fits["dl_guided"])
        for model, method in _MODELS:
            fit = fits[model]
            frame = fit.coefficients.rename(index=rename).reset_index()
            sensitivity, specificity, auc = fit.roc.percent()
            frame = frame.assign(bone=bone, model=model, method=method, n=fit.n,
                                 log_likelihood=fit.log_likelihood, sensitivity=sensitivity,
                                 specificity=specificity, auc=auc, lrt_statistic=lrt.statistic,
                                 lrt_df=lrt.df, lrt_p_value=lrt.p_value, lrt_log10_p_value=lrt.log10_p_value)
            frames.append(frame)
    result = pd.concat(frames, ignore_index=True)
    # Levels in order of appearance: the index stays in the paper's row order and is
    # lexsorted, so ``.loc[(bone, model)]`` is fast and warning-free.
    keys = ["bone", "model", "variable"]
    factorized = [pd.factorize(result[key], sort=False) for key in keys]
    result.index = pd.MultiIndex(levels=[uniques for _, uniques in factorized],
                                 codes=[codes for codes, _ in factorized], names=keys)
    result = result.drop(columns=keys)
    first = ["method"]
    return result[first + [c for c in result.columns if c not in first]]


def round_as_printed(value: float, printed: str) -> str:
    """``value`` rounded to the digits of the printed number ``printed`` (half up), written alike.

    The printed string's last digit sets the rounding, so "65.0" keeps one decimal and
    "8.0e-4" two significant digits; a printed power of ten is kept, e.g.
    ``round_as_printed(7.0145e-33, "7.01e-33")`` is ``"7.01e-33"`` and
    ``round_as_printed(0.0102, "0.01")`` is ``"0.01"``. Rounding is done on
    :class:`decimal.Decimal` (no binary rounding surprises).
    """
    text = printed.strip().lower()
    mantissa, _, exponent = text.partition("e")
    power = int(exponent) if exponent else 0
    places = Decimal(mantissa).as_tuple().exponent
    scaled = Decimal(repr(float(value))).scaleb(-power).quantize(Decimal(1).scaleb(places), rounding=ROUND_HALF_UP)
    return f"{scaled}e{power}" if exponent else str(scaled)


def _matches(value: float, printed: str) -> bool:
    return Decimal(round_as_printed(value, printed)) == Decimal(printed.strip())


def compare_with_printed(reproduced: pd.DataFrame, published: Mapping) -> pd.DataFrame:
    """Set :func:`table3` beside Table 3's printed numbers, to the printed digits.

    Parameters
    ----------
    reproduced : pandas.DataFrame
        Output of :func:`table3`.
    published : mapping
        ``published_values("qmri_pain")["table3"]`` from ``book/published.yml``: per bone
        ``lrt_p`` and per model the variables' [estimate, standard error, p-value] and
        ``roc`` [sensitivity, specificity, AUC], all as printed strings.

    Returns
    -------
    pandas.DataFrame
        One row per printed number: bone, model, variable, quantity, printed,
        reproduced (rounded as printed), reproduced_full, match. Printed numbers with no
        reproduced counterpart (a bone or variable not fitted) are left out.
    """
    rows = []

    def add(bone, model, variable, quantity, printed, value):
        rows.append({"bone": bone, "model": model, "variable": variable, "quantity": quantity,
                     "printed": printed, "reproduced": round_as_printed(value, printed),
                     "reproduced_full": float(value), "match": _matches(value, printed)})

    flat = reproduced.reset_index()
    for bone, block in published.items():
        if not isinstance(block, Mapping) or bone not in set(flat["bone"]):
            continue
        if "lrt_p" in block:
            add(bone, "dl_guided vs classical", "", "LRT p-value", str(block["lrt_p"]),
                flat.loc[flat["bone"] == bone, "lrt_p_value"].iloc[0])
        for model in ("classical", "dl_guided"):
            fitted = flat[(flat["bone"] == bone) & (flat["model"] == model)].set_index("variable")
            for variable, numbers in (block.get(model) or {}).items():
                if variable == "roc":
                    for quantity, printed in zip(("sensitivity", "specificity", "auc"), numbers):
                        add(bone, model, "ROC", quantity, str(printed), fitted[quantity].iloc[0])
                    continue
                if variable not in fitted.index:
                    continue
                for quantity, printed in zip(("estimate", "std_error", "p_value"), numbers):
                    add(bone, model, variable, quantity, str(printed), fitted.loc[variable, quantity])
    return pd.DataFrame(rows)
