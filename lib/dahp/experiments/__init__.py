"""The paper's experiments and their results (the method itself lives one level up, in :mod:`dahp`).

- :mod:`dahp.experiments.records`  -- the results layer: one typed record per artifact, its files
  under ``data/results/<profile>/`` and its headline numbers, computed once
- :mod:`dahp.experiments.grid`     -- sensitivity grids (Fig 1, Fig 4)
- :mod:`dahp.experiments.cases`    -- λ-selection cases: ξ against every baseline, judged by the LDS (Fig 2, 3, 5, 6)
- :mod:`dahp.experiments.removal`  -- data selection by removal (the poster's table)
- :mod:`dahp.experiments.theorem`  -- Theorem 4.3 on planted problems and on real data
- :mod:`dahp.experiments.robustness` -- every λ rule on every problem of the robustness suite (issue 13)
- :mod:`dahp.experiments.status`   -- the reproduction status: each claim's verdict from the records
"""
