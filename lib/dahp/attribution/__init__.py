"""Attribution: per-example gradient rows and their projection, the λ scale of every attributor and
every λ grid (:mod:`dahp.attribution.scales`), the spectral engine (one factorization serves every
λ), the attributors and their scorers, dattri's attributors on our settings, and the LDS."""
