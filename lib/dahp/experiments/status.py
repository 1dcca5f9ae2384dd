"""The reproduction status: each claim of the paper (C1-C12) and of a seed (C13), its number, ours, and a verdict.

Every number comes from the experiments' records the book's pages saved under
``data/results/<profile>/``, through the same headline methods the pages display; nothing here
reads a file by its column layout. A verdict is computed from measured numbers only, with their
uncertainty: a difference counts when it exceeds two standard errors (over test queries for the
LDS, over retraining seeds for the removal table). A claim that cannot be judged here says why
(its data not supplied, its page not run, or a check that turned out vacuous). The rule behind
each verdict is written beside it (``rule`` column), fixed before looking at the numbers.

Book: "Reproduction status".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd

from dahp.core.config import InvalidParameterError
from dahp.core.published import PAPER_STATEMENTS, SEED_STATEMENTS
from dahp.core.results import _plain, write_json
from dahp.core.statistics import FAILS, HOLDS, NOT_RUN, VERDICTS, share_verdict
from dahp.data.settings import get_setting
from dahp.experiments.cases import QUANTILE_RULES, SELECTED, THRESHOLD_RULES, SelectionStudy
from dahp.experiments.grid import (
    BEST_EPOCH_RULE,
    BEST_EPOCH_SETTINGS,
    ENTANGLEMENT_RULE,
    EPOCH_RULE,
    REGULARIZATION_RULE,
    GridRecord,
    best_epoch_verdict,
    entanglement_verdict,
    epoch_verdict,
    regularization_verdict,
)
from dahp.experiments.learned import C13_RULE, LearnedAblationRecord, LearnedWeightsRecord, c13_verdict
from dahp.experiments.removal import REMOVAL_RULE, RemovalRecord
from dahp.experiments.theorem import THEOREM_RULE, TheoremRecord

#: The paper's own claims (its checklist); their texts are in :mod:`dahp.core.published`, as are the
#: claims of seed papers this package adds (:data:`SEED_CLAIMS`).
PAPER_CLAIMS = tuple(PAPER_STATEMENTS)

#: Columns of ``reproduction_status.csv``.
COLUMNS = ("claim", "artifact", "paper", "ours", "holds", "reason", "rule")

FIG1A = "grid_mnist_mlp_if_cg_regularization"
FIG1B = "grid_mnist_mlp_trak_proj_dim_regularization"


@dataclasses.dataclass
class Verdict:
    """One claim's row, and the headline numbers it was judged from (record stem -> key -> value)."""

    claim: str
    artifact: str
    paper: str
    ours: str
    holds: str
    rule: str
    reason: str = ""
    numbers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def row(self) -> dict[str, str]:
        """The CSV row."""
        return {name: getattr(self, name) for name in COLUMNS}


def _missing(claim: str, artifact: str, paper: str, rule: str, page: str) -> Verdict:
    return Verdict(claim, artifact, paper, "—", NOT_RUN, rule, f"page not run: {page}")


def _setting_missing(name: str) -> str | None:
    """Why results on setting ``name`` cannot be judged here (data missing, or fixture data), or None."""

    reason = get_setting(name).not_judged()
    return None if reason is None else f"{name}: {reason}"


def _used(record: Any, *keys: str) -> dict[str, dict[str, Any]]:
    """The headline entries a verdict used, as saved (plain JSON values)."""
    headline = _plain(record.headline())
    stem = getattr(record, "stem", None) or record.name
    return {stem: {key: headline[key] for key in keys}}


# --------------------------------------------------------------------------------------------
# The claims


def c1(folder: Path) -> Verdict:
    rule = REGULARIZATION_RULE
    paper = PAPER_STATEMENTS["C1"]
    grid = GridRecord.load(folder, FIG1A)
    if grid is None:
        return _missing("C1", "Fig 1a", paper, rule, "Fig 1a")
    head = grid.headline()
    ratio, rise = head["ratio_high_low"], head["difference_high_low"]
    spreads = "; ".join(
        f"{g.stem[5:]}: {g.headline()['min_lds']:.2f}..{g.headline()['max_lds']:.2f}" for g in _judged_grids(folder)
    )
    ours = (
        f"ratio {ratio.text(2)}, difference {rise.text(3)} ({grid.queries_used()} test queries); "
        f"min..max LDS per grid: {spreads}"
    )
    return Verdict(
        "C1",
        "Fig 1a, Fig 1, Fig 4",
        paper,
        ours,
        regularization_verdict(grid),
        rule,
        numbers=_used(grid, "ratio_high_low", "difference_high_low"),
    )


def _judged_grids(folder: Path, pattern: str = "grid_*.json") -> list[GridRecord]:
    """The saved grids whose setting's data can be judged here (fixture data and missing data left out)."""
    return [g for g in GridRecord.load_all(folder, pattern) if _setting_missing(g.spec["setting"]) is None]


def _epoch_grids(folder: Path, attributor: str | None = None) -> list[GridRecord]:
    grids = _judged_grids(folder, "grid_*_training_epoch.json")
    return [g for g in grids if attributor is None or g.spec["attributor"] == attributor]


def c2(folder: Path) -> Verdict:
    rule = BEST_EPOCH_RULE
    paper = PAPER_STATEMENTS["C2"]
    grids = {g.spec["setting"]: g for g in _epoch_grids(folder, "trak")}
    if not grids:
        return _missing("C2", "Fig 1e", paper, rule, "Fig 1e")
    ours = "; ".join(
        f"{name}: best epoch {g.headline()['best_against_last']['best']} of {sorted(g.values('training_epoch'))}"
        for name, g in grids.items()
    )
    numbers = {}
    for g in grids.values():
        numbers.update(_used(g, "best_against_last"))
    reason = "; ".join(
        _setting_missing(name) or f"{name}: Fig 1e's panel not run" for name in BEST_EPOCH_SETTINGS if name not in grids
    )
    return Verdict("C2", "Fig 1e", paper, ours, best_epoch_verdict(grids), rule, reason, numbers)


def c3(folder: Path) -> Verdict:
    rule = ENTANGLEMENT_RULE
    paper = PAPER_STATEMENTS["C3"]
    grid = GridRecord.load(folder, FIG1B)
    if grid is None:
        return _missing("C3", "Fig 1b", paper, rule, "Fig 1b")
    ent = grid.headline()["entanglement"]
    per_dim = "; ".join(f"p={d}: λ=0 {v['at_zero'].text()}, best {v['best'].text()}" for d, v in ent["per_dim"].items())
    ours = (
        f"p={ent['largest']} minus p={ent['smallest']}: at λ=0 {ent['zero_large_minus_small'].text()}, "
        f"at the best λ {ent['best_large_minus_small'].text()} ({per_dim})"
    )
    missing = [m for m in (_setting_missing("cifar2_resnet9"),) if m]
    return Verdict(
        "C3",
        "Fig 1b (Fig 1c/1f need user data)",
        paper,
        ours,
        entanglement_verdict(grid),
        rule,
        "; ".join([*missing, *(m for m in (_setting_missing("wikitext2_gpt2"),) if m)]),
        _used(grid, "entanglement"),
    )


def c4(folder: Path) -> Verdict:
    rule = EPOCH_RULE
    paper = PAPER_STATEMENTS["C4"]
    grids = _epoch_grids(folder)
    if not grids:
        return _missing("C4", "Fig 1e, Fig 4", paper, rule, "Fig 1e / Fig 4")
    parts, numbers = [], {}
    for g in grids:
        h = g.headline()["best_against_last"]
        parts.append(
            f"{g.spec['setting']} {g.spec['attributor']}: epoch {h['best']} {h['lds_best'].text()} "
            f"vs last {h['last']} {h['lds_last'].text()} (difference {h['best_minus_last'].text()})"
        )
        numbers.update(_used(g, "best_against_last"))
    return Verdict("C4", "Fig 1e, Fig 4", paper, "; ".join(parts), epoch_verdict(grids), rule, numbers=numbers)


def _studies(folder: Path) -> list[SelectionStudy]:
    return [_judged_only(s) for s in (SelectionStudy.load(folder, f"selection_{a}") for a in ("iffim", "trak")) if s]


def _judged_only(study: SelectionStudy) -> SelectionStudy:
    """The study with every case on unjudged data (fixture files) turned into a case not run, with the reason."""
    for case in study.cases:
        reason = _setting_missing(case.setting)
        if case.ok and reason is not None:
            case.status = reason.split(": ", 1)[1]
    return study


def _not_run_cases(studies: list[SelectionStudy]) -> str:
    seen = {}
    for study in studies:
        for case in study.not_run:
            seen.setdefault(case.setting, case.status)
    return "; ".join(f"{name}: {why}" for name, why in seen.items())


def _case_numbers(study: SelectionStudy, head: dict[str, Any], *keys: str) -> dict[str, dict[str, Any]]:
    """The per-case headline entries a verdict used (plain JSON values), under the study's file stem."""
    return {study.name: {case: {key: values[key] for key in keys} for case, values in _plain(head).items()}}


def _case_name(study: SelectionStudy, key: str) -> str:
    return f"{study.config.get('attributor', study.name).upper()} {key}"


def c5(folder: Path) -> Verdict:
    rule = "every λ curve has one peak (a step counts only when > 2 SE, paired over queries): holds; most: in part"
    paper = PAPER_STATEMENTS["C5"]
    studies = [s for s in _studies(folder) if s.ran]
    if not studies:
        return _missing("C5", "Fig 2, Fig 3", paper, rule, "Fig 2 / Fig 3")
    parts, checks, numbers = [], [], {}
    for study in studies:
        head = study.headline()
        for key, case in zip(head, study.ran):
            rises = case.rises_from_smallest()
            parts.append(
                f"{_case_name(study, key)}: {head[key]['peaks']} peak(s)"
                + ("" if rises else ", no established rise from the smallest λ")
            )
            checks.append(head[key]["peaks"] == 1)
        numbers.update(_case_numbers(study, head, "peaks"))
    return Verdict(
        "C5", "Fig 2, Fig 3", paper, "; ".join(parts), share_verdict(checks), rule, _not_run_cases(studies), numbers
    )


def c6(folder: Path) -> Verdict:
    rule = THEOREM_RULE
    paper = PAPER_STATEMENTS["C6"]
    record = TheoremRecord.load(folder)
    if record is None:
        return _missing("C6", "theory check", paper, rule, "Theory check")
    planted, real = record.planted_summary(), record.real_summary()
    ours = (
        f"planted: {planted['premise_and_rises']} of {planted['premise']} triples with ξ<ω rise (verifies the algebra)"
    )
    holds, reason = record.verdict()
    # the real-data numbers are shown unless the planted check failed (the only failure that gives a reason)
    if real is not None and not (holds == FAILS and reason):
        ours += (
            f"; {record.setting}: ξ<ω̂ in {real['premise']} of {real['pairs']} (query, λ) pairs, "
            f"largest ω̂ {real['largest_omega']:.3f}, smallest ξ {real['smallest_xi']:.3f}"
        )
        if real["premise"]:
            ours += f", LDS rises in {real['premise_and_rises']} of them"
    return Verdict("C6", "theory check", paper, ours, holds, rule, reason, _used(record, "planted", "real"))


def c7(folder: Path) -> Verdict:
    rule = (
        "ξ̄ non-decreasing on every curve, and the LDS at the 0.4 and 0.6 picks within 0.05 of the 0.5 pick "
        "(paired difference): holds; one of the two: in part"
    )
    paper = PAPER_STATEMENTS["C7"]
    studies = [s for s in _studies(folder) if s.ran]
    if not studies:
        return _missing("C7", "Fig 5", paper, rule, "Fig 2 / Fig 3")
    monotone, total, worst, numbers = 0, 0, (0.0, ""), {}
    for study in studies:
        head = study.headline()
        count, n = study.monotone_count()
        monotone, total = monotone + count, total + n
        for key, case in zip(head, study.ran):
            for other in (rule for rule in THRESHOLD_RULES if rule != SELECTED):
                gap = abs(case.gain(other, SELECTED).value)
                if gap >= worst[0]:
                    worst = (gap, f"{_case_name(study, key)}, {other}")
        numbers.update(_case_numbers(study, head, "xi_monotone"))
    ours = (
        f"ξ̄ non-decreasing on {monotone} of {total} curves; largest LDS gap between the 0.4/0.6 and the 0.5 pick "
        f"{worst[0]:.3f} ({worst[1]})"
    )
    return Verdict(
        "C7", "Fig 5", paper, ours, share_verdict([monotone == total, worst[0] <= 0.05]), rule, numbers=numbers
    )


def c8(folder: Path) -> Verdict:
    rule = (
        f"per case run: LDS({SELECTED})/LDS(best) >= 0.9 and LDS({SELECTED}) above LDS(published_default) by > 2 SE "
        "(paired over queries); all: holds, some: in part"
    )
    paper = PAPER_STATEMENTS["C8"]
    studies = [s for s in _studies(folder) if s.ran]
    if not studies:
        return _missing("C8", "Fig 2, Fig 3", paper, rule, "Fig 2 / Fig 3")
    parts, checks, numbers = [], [], {}
    for study in studies:
        head = study.headline()
        for key, values in study.paper_rule_check().items():
            ratio, gain = values["ratio_to_best"], values["gain_over_default"]
            parts.append(f"{_case_name(study, key)}: {ratio.text(2)} of best, {gain.text(3)} vs default")
            checks.append(values["holds"])
        numbers.update(_case_numbers(study, head, "ratio_to_best", "gain_over_default"))
    return Verdict(
        "C8", "Fig 2, Fig 3", paper, "; ".join(parts), share_verdict(checks), rule, _not_run_cases(studies), numbers
    )


def c9(folder: Path) -> Verdict:
    rule = "no spectrum quantile reaches 0.9 of the best LDS in every case run: holds; one does: does not hold"
    paper = PAPER_STATEMENTS["C9"]
    studies = [s for s in _studies(folder) if s.ran]
    if not studies:
        return _missing("C9", "Fig 2, Fig 3", paper, rule, "Fig 2 / Fig 3")
    rules = pd.concat([s.rules_table() for s in studies], ignore_index=True)
    quantiles = rules[rules.rule.isin(QUANTILE_RULES)]
    worst = quantiles.groupby("rule", sort=False)["of best"].min()
    ours = "worst ratio to the best LDS per quantile: " + ", ".join(f"{q}: {w:.2f}" for q, w in worst.items())
    everywhere = [q for q, w in worst.items() if w >= 0.9]
    return Verdict("C9", "Fig 2, Fig 3", paper, ours, FAILS if everywhere else HOLDS, rule, _not_run_cases(studies))


def c10(folder: Path) -> Verdict:
    rule = "per case, the best λ moves by at most one grid step across α and the selected λ's rank changes by at most 2: holds"
    paper = PAPER_STATEMENTS["C10"]
    study = SelectionStudy.load(folder, "alpha_iffim")
    study = None if study is None else _judged_only(study)
    if study is None or not study.ran:
        return _missing("C10", "Fig 6", paper, rule, "Fig 6")
    table = study.alpha_robustness()
    parts, checks = [], []
    for _, row in table.iterrows():
        ranks = row["ranks of selected"]
        moved = row["best λ moves (grid steps)"]
        parts.append(f"{row.case}: best λ moves {moved} step(s), rank of the pick {min(ranks)}..{max(ranks)}")
        checks.append(moved <= 1 and max(ranks) - min(ranks) <= 2)
    return Verdict("C10", "Fig 6", paper, "; ".join(parts), share_verdict(checks), rule, _not_run_cases([study]))


def c11(folder: Path) -> Verdict:
    rule = REMOVAL_RULE
    paper = PAPER_STATEMENTS["C11"]
    record = RemovalRecord.load(folder)
    if record is None or record.accuracies.empty:
        return _missing("C11", "removal table", paper, rule, "Removal table")
    # headline keys read "<setting> <attributor> <rate>%"; rows on fixture data are not judged
    unjudged = {name: _setting_missing(name) for name in {key.split(" ", 1)[0] for key in record.headline()}}
    head = {key: value for key, value in record.headline().items() if unjudged[key.split(" ", 1)[0]] is None}
    if not head:
        return _missing("C11", "removal table", paper, rule, "Removal table (no setting with judged data)")
    ours = "; ".join(f"{key}: {value.text(2)} points" for key, value in head.items())
    not_run = "; ".join(
        [f"{name}: data not supplied" for name in record.config.get("not_run", {})]
        + [reason for reason in unjudged.values() if reason]
    )
    return Verdict(
        "C11",
        "removal table",
        paper,
        ours,
        record.verdict(head),
        rule,
        not_run,
        _used(record, *head),
    )


def c12(folder: Path) -> Verdict:
    rule = (
        "ξ needs no model beyond the attributor's own full-data model(s) while the grid search retrains M models, "
        "and in every case the time ξ adds to running the attributor (validation features, ξ̄) is below the "
        "time the grid search adds (retraining, LDS over the grid): holds"
    )
    paper = PAPER_STATEMENTS["C12"]
    studies = [s for s in _studies(folder) if s.ran]
    if not studies:
        return _missing("C12", "Fig 2, Fig 3", paper, rule, "Fig 2 / Fig 3")
    parts, checks = [], []
    for study in studies:
        for case in study.ran:
            parts.append(
                f"{study.config.get('attributor', '').upper()} {case.label}: ξ adds {case.xi_seconds:.1f} s "
                f"({case.xi_trainings} full-data model(s), no retraining) vs grid search "
                f"{case.grid_search_seconds:.1f} s ({case.grid_search_trainings} retrained)"
            )
            checks.append(case.grid_search_trainings > 0 and case.xi_seconds < case.grid_search_seconds)
    return Verdict(
        "C12",
        "Fig 2, Fig 3, bench/xi_selection.py",
        paper,
        "; ".join(parts) + " (wall times as first computed; retraining as recorded when it ran)",
        HOLDS if all(checks) else FAILS,
        rule,
    )


def c13(folder: Path) -> Verdict:
    rule = C13_RULE
    paper = SEED_STATEMENTS["C13"]
    record = LearnedWeightsRecord.load(folder)
    if record is None or record.per_query.empty:
        return _missing("C13", "learned weights", paper, rule, "Learned weights")
    unjudged = {s: _setting_missing(s) for s, _ in record.cases}
    cases = record.judged_cases(set(_excluded(unjudged)))
    if not cases:
        return _missing("C13", "learned weights", paper, rule, "Learned weights (no TracIn/TRAK case on judged data)")
    head = record.headline()
    keys = [record.label(s, a) for s, a in cases]
    verdict = c13_verdict(record, LearnedAblationRecord.load(folder), set(_excluded(unjudged)))
    ours = "; ".join(
        f"{key}: uniform {head[key]['lds_uniform'].text(3)}, learned {head[key]['lds_learned'].text(3)}, "
        f"difference {head[key]['learned_minus_uniform'].text(3)}"
        for key in keys
    )
    reason = "; ".join([r for r in unjudged.values() if r] + [verdict.text()])
    return Verdict(
        "C13",
        "learned weights (new measurements on MNIST, not the seed's settings)",
        paper,
        ours,
        verdict.verdict,
        rule,
        reason,
        _used(record, *keys),
    )


def _excluded(unjudged: dict[str, str | None]) -> list[str]:
    """Settings whose results cannot be judged here."""
    return [s for s, reason in unjudged.items() if reason]


CLAIMS: list[Callable[[Path], Verdict]] = [c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13]


@dataclasses.dataclass
class StatusRecord:
    """Every claim's verdict, from the records under one results folder."""

    verdicts: list[Verdict]
    profile: str | None = None
    stem: str = "reproduction_status"

    def table(self) -> pd.DataFrame:
        """One row per claim (the CSV)."""
        return pd.DataFrame([v.row() for v in self.verdicts], columns=list(COLUMNS))

    def counts(self, claims: Collection[str] | None = None) -> dict[str, int]:
        """How many claims (of ``claims``; None: all) got each verdict."""
        chosen = [v for v in self.verdicts if claims is None or v.claim in claims]
        return {verdict: sum(v.holds == verdict for v in chosen) for verdict in VERDICTS}

    def verdict(self, claim: str) -> Verdict:
        """The verdict of one claim (``"C13"``)."""
        for v in self.verdicts:
            if v.claim == claim:
                return v
        raise InvalidParameterError("claim", claim, [v.claim for v in self.verdicts])

    def headline(self) -> dict[str, Any]:
        """Claim -> verdict."""
        return {v.claim: v.holds for v in self.verdicts}

    def save(self, folder: Path) -> Path:
        """Write ``reproduction_status.csv`` and ``reproduction_status.json`` (with the numbers behind each verdict)."""
        path = folder / f"{self.stem}.csv"
        self.table().to_csv(path, index=False)
        write_json(
            folder / f"{self.stem}.json",
            {
                "record": "status",
                "profile": self.profile,
                "headline": self.headline(),
                "numbers": {v.claim: v.numbers for v in self.verdicts},
            },
        )
        return path


def reproduction_status(folder: Path, profile: str | None = None) -> StatusRecord:
    """Every claim's verdict from the records under ``folder``."""
    return StatusRecord([claim(folder) for claim in CLAIMS], profile)
