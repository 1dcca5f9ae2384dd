"""The paper's experiments: each module runs one, owns its typed record (files under
``data/results/<profile>/``, headline numbers computed once) and the verdicts on the claims it tests.
Reading and writing result files is :mod:`dahp.core.results`; the statistics are :mod:`dahp.core.statistics`.

- :mod:`dahp.experiments.grid`       -- sensitivity grids (Fig 1, Fig 4): ``GridRecord``
- :mod:`dahp.experiments.cases`      -- λ-selection cases: ξ against every baseline, judged by the LDS (Fig 2, 3, 5, 6)
- :mod:`dahp.experiments.removal`    -- data selection by removal (the poster's table): ``RemovalRecord``
- :mod:`dahp.experiments.theorem`    -- Theorem 4.3 on planted problems and on real data: ``TheoremRecord``
- :mod:`dahp.experiments.learned`    -- learned parameter-group weights (seed 002): ``LearnedWeightsRecord``
- :mod:`dahp.experiments.suite`      -- the problems of the robustness suite
- :mod:`dahp.experiments.robustness` -- every λ rule on every problem of the robustness suite (issue 13)
- :mod:`dahp.experiments.profiles`   -- the run sizes (quick, default, paper)
- :mod:`dahp.experiments.defaults`   -- Table A.1 and the training recipes: ``DefaultsRecord``
- :mod:`dahp.experiments.status`     -- the reproduction status: each claim's verdict from the records
"""
