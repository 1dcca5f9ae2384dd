"""The paper's numbers live in dahp.core.published only, and the pages and the status read them from there."""

from pathlib import Path

from dahp.core import published
from dahp.core.published import (
    PAPER_STATEMENTS,
    POSTER_REMOVAL_RATES,
    POSTER_TABLE,
    PUBLISHED_DEFAULTS,
    SEED_CLAIMS,
    SEED_STATEMENTS,
)
from dahp.experiments.removal import REMOVAL_RATES, RemovalConfig
from dahp.experiments.status import PAPER_CLAIMS

ROOT = Path(__file__).resolve().parents[1]


def test_the_poster_table_has_one_value_per_rate_and_its_numbers_are_written_nowhere_else():
    assert all(len(cells) == len(POSTER_REMOVAL_RATES) for cells in POSTER_TABLE.values())
    assert REMOVAL_RATES == POSTER_REMOVAL_RATES == RemovalConfig().rates
    numbers = {f"{mean:.2f}" for cells in POSTER_TABLE.values() for mean, _ in cells}
    sources = [*(ROOT / "lib").rglob("*.py"), *(ROOT / "notebooks").glob("*.md")]
    home = Path(published.__file__).resolve()
    for path in sources:
        if path.resolve() == home:
            continue
        text = path.read_text()
        copied = sorted(n for n in numbers if n in text)
        assert not copied, f"{path.relative_to(ROOT)} writes the poster's {copied}; read them from dahp.core.published"


def test_the_removal_claim_quotes_the_poster_table():
    for method in ("IFFIM default", "IFFIM selected", "TRAK default", "TRAK selected"):
        assert "/".join(f"{mean:.2f}" for mean, _ in POSTER_TABLE[method]) in PAPER_STATEMENTS["C11"]


def test_every_claim_has_its_published_statement():
    assert PAPER_CLAIMS == tuple(f"C{k}" for k in range(1, 13))
    assert set(SEED_STATEMENTS) == set(SEED_CLAIMS) and not set(SEED_CLAIMS) & set(PAPER_CLAIMS)
    assert all(text.strip() for text in [*PAPER_STATEMENTS.values(), *SEED_STATEMENTS.values()])


def test_the_published_default_lambdas_are_the_attributors_defaults_and_table_a1_shows_them():
    from dahp.attribution.attributors import get_attributor, make_params
    from dahp.experiments.defaults import table_a1

    table = table_a1().defaults
    for attributor, lam in PUBLISHED_DEFAULTS.items():
        assert make_params(attributor).regularization == lam
        row = table[(table.attributor == get_attributor(attributor).label) & (table.hyperparameter == "regularization")]
        assert row.default.tolist() == [lam], attributor
